//! Types and traits generated from `wit/rollingops.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rollingops",
});
