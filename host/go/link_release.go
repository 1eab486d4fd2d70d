//go:build rollingops_release

package rollingops

// The release build of the C ABI crate: `cargo build --release -p rollingops-capi` writes
// target/release/librollingops_capi.a.

// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -lrollingops_capi -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
