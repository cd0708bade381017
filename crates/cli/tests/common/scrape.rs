//! Scrape an agent's /metrics as Prometheus would, from the lab's external
//! namespace over the fabric, and parse the OpenMetrics text strictly.

use std::collections::BTreeMap;
use std::io::{Read, Write};

/// One sample: metric name (with its _total/_bucket suffix), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: samples, and each family's declared TYPE.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Samples of `name` whose labels include every pair of `with`.
    pub fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The single sample of `name` with those labels.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found = self.find(name, with);
        assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
        found[0].value
    }
}

/// GET /metrics from `addr` inside namespace `ns`: (status line, content
/// type, body).
pub fn get(ns: &str, addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    let file = strait_netlink::NetnsFile::open(&strait_lab::run::netns_path(ns)).unwrap();
    let path = path.to_string();
    let raw = strait_netlink::in_netns(&file, move || {
        let mut c = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    })
    .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect(&raw);
    let status = head.lines().next().unwrap_or_default().to_string();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status, ctype, body.to_string())
}

/// Parse OpenMetrics text; panics, quoting the line, on anything malformed
/// (a missing `# EOF`, a sample of an undeclared family, a bad value).
pub fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "text after # EOF: {line}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect(line);
            e.types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest.split_once("=\"").expect(line);
            let end = v.find('"').expect(line);
            map.insert(k.to_string(), v[..end].to_string());
            rest = v[end + 1..].trim_start_matches(',');
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| e.types.contains_key(*f)))
            .unwrap_or(name);
        assert!(e.types.contains_key(family), "no TYPE for {name}: {line}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        e.samples.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    assert!(eof, "no # EOF at the end");
    e
}

/// Scrape `node`'s agent from the lab's external namespace.
pub fn scrape(lab: &super::Lab, node: &str, port: u16) -> Exposition {
    let ip = lab.node(node).ip;
    let ns = strait_model::lab::external_netns(lab.name());
    let (status, ctype, body) = get(&ns, std::net::SocketAddr::new(ip.into(), port), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    parse(&body)
}
