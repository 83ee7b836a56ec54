//! Name resolution for the dev cluster, where pods are processes on one machine.
//!
//! The dev cluster's kubelet gives each pod its own loopback address and writes a hosts file
//! naming pods and Services (`<pod>.<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`); it hands
//! the file to the processes it starts in [`TEST_HOSTS_FILE`]. Production never sets that
//! variable: then [`resolve`] returns the address unchanged and the system resolver (cluster
//! DNS) answers as usual.

use std::net::IpAddr;

/// Path of the dev cluster's hosts file; set only by the dev cluster's kubelet.
pub const TEST_HOSTS_FILE: &str = "IGGY_TEST_HOSTS_FILE";

/// The address a `hosts(5)`-format text gives `host`, if any (first match wins).
pub fn lookup_in(text: &str, host: &str) -> Option<IpAddr> {
    let host = host.trim_end_matches('.');
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some(ip)
        })
}

/// `host:port` with the host replaced by its address from the dev cluster's hosts file, when
/// [`TEST_HOSTS_FILE`] is set and names it; otherwise `address` as given. The file is read on
/// every call: pods come and go with new addresses, and callers resolve once per connection.
pub fn resolve(address: &str) -> String {
    let Some(path) = std::env::var_os(TEST_HOSTS_FILE) else {
        return address.to_string();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => resolve_in(&text, address),
        Err(_) => address.to_string(),
    }
}

/// `host:port` with the host replaced by its address in a hosts-format `text`, or `address`
/// unchanged when the host is an IP or not named there.
pub fn resolve_in(text: &str, address: &str) -> String {
    let Some((host, port)) = address.rsplit_once(':') else {
        return address.to_string();
    };
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return address.to_string();
    }
    match lookup_in(text, host) {
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_from_the_first_matching_line() {
        let text = "# dev cluster\n127.1.0.2 dev-0.dev-replicas.default.svc.cluster.local dev-0.dev-replicas.default.svc\n\
                    127.2.0.1 dev.default.svc  # a Service\n127.9.9.9 dev.default.svc\n";
        assert_eq!(
            lookup_in(text, "dev-0.dev-replicas.default.svc"),
            Some("127.1.0.2".parse().expect("ip"))
        );
        assert_eq!(
            lookup_in(text, "DEV.default.svc."),
            Some("127.2.0.1".parse().expect("ip"))
        );
        assert_eq!(lookup_in(text, "other.default.svc"), None);
        assert_eq!(lookup_in(text, "Service"), None);
        assert_eq!(resolve_in(text, "dev.default.svc:4317"), "127.2.0.1:4317");
        assert_eq!(resolve_in(text, "10.0.0.1:4317"), "10.0.0.1:4317");
        assert_eq!(resolve_in(text, "unknown:1"), "unknown:1");
        assert_eq!(resolve_in(text, "no-port"), "no-port");
    }
}
