//! C ABI over the rollingops host library (to be written).
