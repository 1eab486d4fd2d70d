//! The etcdctl connection file under `base_dir` (spec/etcd.md §3.6) and the environment
//! every etcdctl invocation gets from it (§4.1).

use serde_json::Value;

/// Path of the connection file, relative to `base_dir`.
pub const ETCDCTL_JSON: &str = "etcd/etcdctl.json";
/// Path of the server CA, relative to `base_dir`.
pub const SERVER_CA: &str = "etcd/server-ca.pem";

/// The file's content for `endpoints`, with paths under `base_dir` (2-space JSON, keys in
/// the reference's order, no trailing newline).
pub fn render(endpoints: &str, base_dir: &str, cert_path: &str, key_path: &str) -> String {
    let base = base_dir.trim_end_matches('/');
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialise");
    format!(
        "{{\n  \"endpoints\": {},\n  \"cacert_path\": {},\n  \"cert_path\": {},\n  \"key_path\": {}\n}}",
        quote(endpoints),
        quote(&format!("{base}/{SERVER_CA}")),
        quote(cert_path),
        quote(key_path)
    )
}

/// The etcdctl environment from the file's content: exactly the four keys are required.
pub fn environment(content: &str) -> Result<Vec<(String, String)>, String> {
    let value: Value =
        serde_json::from_str(content).map_err(|e| format!("etcdctl config is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("etcdctl config is not a JSON object")?;
    let expected = ["endpoints", "cacert_path", "cert_path", "key_path"];
    if object.len() != expected.len()
        || !expected
            .iter()
            .all(|k| object.get(*k).is_some_and(Value::is_string))
    {
        return Err(format!(
            "etcdctl config has an invalid format: expected exactly {expected:?}"
        ));
    }
    let get = |k: &str| object[k].as_str().unwrap_or_default().to_string();
    Ok(vec![
        ("ETCDCTL_API".into(), "3".into()),
        ("ETCDCTL_ENDPOINTS".into(), get("endpoints")),
        ("ETCDCTL_CACERT".into(), get("cacert_path")),
        ("ETCDCTL_CERT".into(), get("cert_path")),
        ("ETCDCTL_KEY".into(), get("key_path")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s10_1_write_env_and_load_it_back() {
        let text = render(
            "https://10.0.0.1:2379,https://10.0.0.2:2379",
            "/var/lib/rollingops",
            "PATH1",
            "PATH2",
        );
        assert_eq!(
            text,
            "{\n  \"endpoints\": \"https://10.0.0.1:2379,https://10.0.0.2:2379\",\n  \"cacert_path\": \"/var/lib/rollingops/etcd/server-ca.pem\",\n  \"cert_path\": \"PATH1\",\n  \"key_path\": \"PATH2\"\n}"
        );
        let env = environment(&text).unwrap();
        assert!(env.contains(&("ETCDCTL_API".into(), "3".into())));
        assert!(env.contains(&(
            "ETCDCTL_CACERT".into(),
            "/var/lib/rollingops/etcd/server-ca.pem".into()
        )));
        assert!(env.contains(&("ETCDCTL_KEY".into(), "PATH2".into())));
    }

    #[test]
    fn rejects_missing_or_extra_keys() {
        assert!(environment("{}").is_err());
        assert!(environment("not json").is_err());
        let extra = r#"{"endpoints":"e","cacert_path":"c","cert_path":"p","key_path":"k","x":"y"}"#;
        assert!(environment(extra).is_err());
    }
}
