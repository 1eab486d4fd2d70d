//go:build !rollingops_release

package rollingops

// The debug build of the C ABI crate: `cargo build -p rollingops-capi` (from the repository
// root) writes target/debug/librollingops_capi.a. Build with `-tags rollingops_release` to
// link target/release instead.

// #cgo LDFLAGS: -L${SRCDIR}/../../target/debug -lrollingops_capi -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
