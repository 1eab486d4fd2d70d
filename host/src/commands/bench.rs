//! `rollingops bench`.
