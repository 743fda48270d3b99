//! TLS for real: the simulator behind TLS fronts (`coinfeed_sim::tls`) with certificates from a
//! test CA made here with rcgen (no key material is committed), and the real binary connecting
//! with `--ca-file`. A valid chain streams over wss:// and recovers a gap over https://; a wrong
//! host name, an expired certificate, a self-signed one and one from another CA are each refused
//! with a log line naming the cause, retried within the backoff bound; TLS 1.2 is the floor.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coinfeed_sim::tls::{Handshake, ServerTls, TlsFront};
use coinfeed_sim::{Sim, SimConfig, WsFault};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

use crate::harness::{count_control, market_lines, max_in_window, rest_lines, Feed};
use crate::operations::TempDir;

/// A certificate authority made for one test.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server's certificate chain and key, as PEM.
struct Identity {
    chain: String,
    key: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate this CA signs, for `names` (DNS names, or IP addresses).
    fn issue(&self, names: &[&str], expired: bool) -> Identity {
        let key = KeyPair::generate().expect("leaf key");
        let p = leaf_params(names, expired);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf certificate");
        Identity { chain: cert.pem(), key: key.serialize_pem() }
    }
}

fn leaf_params(names: &[&str], expired: bool) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("dns name")),
        })
        .collect();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    p
}

/// A certificate signed by its own key, for `names`: no CA vouches for it.
fn self_signed(names: &[&str]) -> Identity {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(names, false).self_signed(&key).expect("self-signed certificate");
    Identity { chain: cert.pem(), key: key.serialize_pem() }
}

/// The names a certificate for the simulator carries: it listens on 127.0.0.1.
const LOOPBACK_NAMES: &[&str] = &["127.0.0.1", "localhost"];

fn server_tls(id: &Identity) -> ServerTls {
    ServerTls::from_pem(id.chain.as_bytes(), id.key.as_bytes()).expect("server tls")
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.0.join(name);
    std::fs::write(&path, text).expect("write pem");
    path
}

fn wss(front: &TlsFront) -> String {
    format!("wss://127.0.0.1:{}/v1/", front.addr().port())
}

fn https(front: &TlsFront) -> String {
    format!("https://127.0.0.1:{}", front.addr().port())
}

fn ok_handshakes(h: &[Handshake]) -> usize {
    h.iter().filter(|h| h.result.is_ok()).count()
}

/// Proves the valid chain: a certificate for 127.0.0.1 from the CA given with --ca-file streams
/// data over wss:// and a gap's trades come back over https:// (both handshakes seen by the
/// fronts, TLS 1.3 negotiated), with no TLS complaint in the log.
#[test]
fn a_valid_chain_streams_over_wss_and_recovers_over_https() {
    let dir = TempDir::new("tls-valid");
    let ca = TestCa::new("coinfeed test CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let id = ca.issue(LOOPBACK_NAMES, false);
    let symbol = "SIMX_SPOT_TLS_USD";
    let sim = Sim::start(SimConfig { symbols: vec![symbol.to_string()], rate_per_sec: 100, ..SimConfig::default() })
        .expect("sim");
    let ws_front = TlsFront::start(server_tls(&id), sim.ws_addr()).expect("ws front");
    let rest_front = TlsFront::start(server_tls(&id), sim.rest_addr()).expect("rest front");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let mut feed = Feed::against(&wss(&ws_front), &https(&rest_front), symbol, "trade", &["--ca-file", &ca_arg]);
    let streamed = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 50);
    assert!(streamed, "no data over wss://; stderr:\n{}", feed.stderr_text());
    sim.inject(WsFault::WithholdTrades { symbol_id: symbol.to_string(), duration: Duration::from_secs(2) });
    let recovered = feed.stdout.wait_until(Duration::from_secs(30), |l| count_control(l, "recovery") >= 1);
    assert!(recovered, "no recovery line; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; stderr:\n{}", feed.stderr_text());

    let out = feed.stdout.snapshot();
    let recovery = &crate::harness::control_lines(&out, "recovery")[0];
    let (ws_h, rest_h) = (ws_front.handshakes(), rest_front.handshakes());
    eprintln!(
        "valid chain: {} ws lines, {} rest lines, recovery {recovery}; ws {ws_h:?}; rest {rest_h:?}",
        market_lines(&out).len(),
        rest_lines(&out).len()
    );
    assert_eq!(recovery["status"], "ok", "{recovery}");
    assert!(!rest_lines(&out).is_empty(), "no record came back over https://");
    assert_eq!(ws_h.len(), 1, "one wss:// connection: {ws_h:?}");
    assert_eq!(ws_h[0].result, Ok("TLSv1_3".to_string()));
    assert!(ok_handshakes(&rest_h) >= 1 && ok_handshakes(&rest_h) == rest_h.len(), "{rest_h:?}");
    let stderr = feed.stderr_text();
    assert!(!stderr.contains("tls: "), "a TLS complaint on a valid chain:\n{stderr}");
    assert!(!stderr.contains("is not used"), "--ca-file called unused on wss://:\n{stderr}");
}

/// Proves a `--ca-file` that no endpoint can use (plain ws:// and http://, as under `--sim`) is
/// named in a warning at start instead of being silently ignored, and the run goes on.
#[test]
fn a_ca_file_with_no_tls_endpoint_is_named_in_a_warning() {
    let dir = TempDir::new("tls-unused-ca");
    let ca_file = write(&dir, "ca.pem", &TestCa::new("coinfeed test CA").pem());
    let symbol = "SIMX_SPOT_NOTLS_USD";
    let sim = Sim::start(SimConfig { symbols: vec![symbol.to_string()], rate_per_sec: 100, ..SimConfig::default() })
        .expect("sim");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let mut feed = Feed::against(&sim.ws_url(), &sim.rest_url(), symbol, "trade", &["--ca-file", &ca_arg]);
    let words = format!("--ca-file {ca_arg} is not used: it applies to wss:// and https:// only");
    let warned = feed.stderr.wait_until(Duration::from_secs(20), |l| l.iter().any(|l| l.contains(&words)));
    assert!(warned, "no warning saying {words:?}; stderr:\n{}", feed.stderr_text());
    let streamed = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 20);
    assert!(streamed, "the run did not go on; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; stderr:\n{}", feed.stderr_text());
    let line = feed.stderr.snapshot().into_iter().find(|l| l.contains(&words)).unwrap_or_default();
    eprintln!("unused --ca-file: {line}");
}

/// One refused case: what the server presents, and the words the log must name it with.
struct Refusal {
    name: &'static str,
    identity: Identity,
    words: &'static str,
}

/// Proves each bad certificate is refused with a log line naming the cause, never connects,
/// and is retried like any failed connect, not in a storm: a wrong host name, an expired
/// certificate, a self-signed one and one from a CA other than --ca-file's, side by side for
/// 12 s each. Every attempt reaches the front as a handshake the client ended; the attempts
/// keep the backoff's bound (at most 10 in any 10 s; measured 7 or 8 in 12 s: two at once,
/// then the jittered exponential backoff from 0.5 s), and a `connection` line names the cause.
#[test]
fn bad_certificates_are_refused_by_name_and_retried_without_a_storm() {
    let dir = TempDir::new("tls-refused");
    let ca = TestCa::new("coinfeed test CA");
    let other_ca = TestCa::new("some other CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let cases = vec![
        Refusal {
            name: "wrong host name",
            identity: ca.issue(&["coinapi.invalid"], false),
            words: "the server's certificate is not valid for host 127.0.0.1 (it names coinapi.invalid)",
        },
        Refusal {
            name: "expired",
            identity: ca.issue(LOOPBACK_NAMES, true),
            words: "the server's certificate expired",
        },
        Refusal {
            name: "self-signed",
            identity: self_signed(LOOPBACK_NAMES),
            words: "the server's certificate has an unknown issuer (self-signed, or signed by a CA not among the 1 CA certificate(s) of --ca-file",
        },
        Refusal {
            name: "untrusted CA",
            identity: other_ca.issue(LOOPBACK_NAMES, false),
            words: "the server's certificate has an unknown issuer (self-signed, or signed by a CA not among the 1 CA certificate(s) of --ca-file",
        },
    ];
    let sim = Sim::start(SimConfig { rate_per_sec: 50, ..SimConfig::default() }).expect("sim");
    let runs: Vec<(Refusal, TlsFront, TlsFront, Feed)> = cases
        .into_iter()
        .map(|case| {
            let ws_front = TlsFront::start(server_tls(&case.identity), sim.ws_addr()).expect("ws front");
            let rest_front = TlsFront::start(server_tls(&case.identity), sim.rest_addr()).expect("rest front");
            let feed = Feed::against(
                &wss(&ws_front),
                &https(&rest_front),
                "BITSTAMP_SPOT_BTC_USD",
                "trade",
                &["--ca-file", &ca_arg],
            );
            (case, ws_front, rest_front, feed)
        })
        .collect();
    let started = Instant::now();
    for (case, _, _, feed) in &runs {
        let named = feed.stderr.wait_until(Duration::from_secs(15), |l| l.iter().any(|l| l.contains(case.words)));
        assert!(named, "{}: no log line saying {:?}; stderr:\n{}", case.name, case.words, feed.stderr_text());
    }
    // The window the attempts are counted over: the behaviour under test is a rate.
    let window = Duration::from_secs(12);
    if let Some(left) = window.checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    for (case, ws_front, _, feed) in &runs {
        let attempts: Vec<Instant> = ws_front.handshakes().iter().map(|h| h.at).collect();
        let line = feed.stderr.snapshot().into_iter().find(|l| l.contains(case.words)).unwrap_or_default();
        let server_side: Vec<String> =
            ws_front.handshakes().iter().map(|h| h.result.clone().err().unwrap_or_default()).collect();
        eprintln!(
            "{}: {} attempts in {:.1}s (max {} in 10 s); log: {line}; server saw: {:?}",
            case.name,
            attempts.len(),
            started.elapsed().as_secs_f64(),
            max_in_window(&attempts, Duration::from_secs(10)),
            server_side.first()
        );
        assert!(ws_front.handshakes().iter().all(|h| h.result.is_err()), "{}: a handshake succeeded", case.name);
        assert!(attempts.len() >= 2, "{}: not retried: {attempts:?}", case.name);
        assert!(max_in_window(&attempts, Duration::from_secs(10)) <= 10, "{}: a retry storm: {attempts:?}", case.name);
        assert!(market_lines(&feed.stdout.snapshot()).is_empty(), "{}: data arrived", case.name);
        assert!(
            feed.stdout.snapshot().iter().any(|l| l.starts_with("{\"type\":\"connection\"") && l.contains(case.words)),
            "{}: no connection line naming the cause",
            case.name
        );
    }
    for (case, _, _, mut feed) in runs {
        feed.signal("INT");
        let (status, _) = feed.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{}: {status:?}", case.name);
    }
}

/// Proves TLS 1.2 is accepted: a server that offers TLS 1.2 only is connected to and streams.
#[test]
fn a_tls_1_2_only_server_is_accepted() {
    let dir = TempDir::new("tls-12");
    let ca = TestCa::new("coinfeed test CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let id = ca.issue(LOOPBACK_NAMES, false);
    let tls12 = ServerTls::tls12_only(id.chain.as_bytes(), id.key.as_bytes()).expect("tls 1.2");
    let sim = Sim::start(SimConfig { rate_per_sec: 100, ..SimConfig::default() }).expect("sim");
    let ws_front = TlsFront::start(tls12, sim.ws_addr()).expect("ws front");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let mut feed =
        Feed::against(&wss(&ws_front), &sim.rest_url(), "BITSTAMP_SPOT_BTC_USD", "trade", &["--ca-file", &ca_arg]);
    let streamed = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 20);
    assert!(streamed, "no data over TLS 1.2; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));
    assert_eq!(ws_front.handshakes()[0].result, Ok("TLSv1_2".to_string()));
}

/// A TLS server that offers only TLS 1.0 and 1.1 (Python's ssl module over the machine's
/// OpenSSL, at security level 0, which still implements them). Before it prints its port it has
/// completed a TLS 1.1 handshake with a client of its own, so a refusal is the other side's.
const OLD_TLS_SERVER: &str = r#"
import socket, ssl, sys, threading, warnings
warnings.simplefilter("ignore")
def context(kind):
    ctx = ssl.SSLContext(kind)
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx
server = context(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(sys.argv[1], sys.argv[2])
client = context(ssl.PROTOCOL_TLS_CLIENT)
client.check_hostname = False
client.verify_mode = ssl.CERT_NONE
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
port = listener.getsockname()[1]
checked = []
def selfcheck():
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client.wrap_socket(raw) as t:
            checked.append(t.version())
check = threading.Thread(target=selfcheck)
check.start()
first = True
while True:
    c, _ = listener.accept()
    c.settimeout(5)
    try:
        t = server.wrap_socket(c, server_side=True)
        if not first:
            print("handshake", t.version(), flush=True)
        t.close()
    except Exception as e:
        print("refused", e, flush=True)
        c.close()
    if first:
        # Only this thread prints, so no two lines interleave.
        check.join()
        print("selfcheck", checked[0] if checked else "failed", flush=True)
        print("port", port, flush=True)
        first = False
"#;

/// Proves the floor: a server offering only TLS 1.0/1.1 (shown able to complete a TLS 1.1
/// handshake) is refused by coinfeed with a line saying TLS 1.2 is the floor, and never streams.
#[test]
fn a_server_offering_only_tls_1_1_is_refused() {
    let dir = TempDir::new("tls-11");
    let ca = TestCa::new("coinfeed test CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let id = ca.issue(LOOPBACK_NAMES, false);
    let chain = write(&dir, "chain.pem", &id.chain);
    let key = write(&dir, "key.pem", &id.key);
    let mut server = Command::new("python3")
        .arg("-c")
        .arg(OLD_TLS_SERVER)
        .arg(&chain)
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for this test (as for ./run.sh test)");
    let out = server.stdout.take().expect("stdout");
    let (tx, rx) = crossbeam_channel::bounded::<String>(256);
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    // Reads the server's lines until `done` holds or the deadline passes.
    let read_until = |seen: &mut Vec<String>, timeout: Duration, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + timeout;
        while !done(seen) {
            match rx.recv_deadline(deadline) {
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        done(seen)
    };
    let port_of = |l: &[String]| l.iter().find_map(|l| l.strip_prefix("port ").map(str::to_string));
    let ready = read_until(&mut seen, Duration::from_secs(15), &|l| {
        port_of(l).is_some() && l.iter().any(|x| x.starts_with("selfcheck"))
    });
    if !ready {
        let _ = server.kill();
        panic!("the TLS 1.1 server did not start: {seen:?}");
    }
    let port = port_of(&seen).expect("port");
    assert!(seen.iter().any(|l| l == "selfcheck TLSv1.1"), "the server could not do TLS 1.1 itself: {seen:?}");
    let before = seen.len();

    let ca_arg = ca_file.to_string_lossy().into_owned();
    let ws = format!("wss://127.0.0.1:{port}/v1/");
    let mut feed = Feed::against(&ws, "http://127.0.0.1:9", "BITSTAMP_SPOT_BTC_USD", "trade", &["--ca-file", &ca_arg]);
    let words = "tls: the server offers no TLS version coinfeed accepts (TLS 1.2 is the floor";
    let named = feed.stderr.wait_until(Duration::from_secs(15), |l| l.iter().any(|l| l.contains(words)));
    let refused =
        read_until(&mut seen, Duration::from_secs(5), &|l| l[before..].iter().any(|l| l.starts_with("refused")));
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));
    let _ = server.kill();
    let _ = server.wait();
    let _ = reader.join();
    let server_side = seen[before..].to_vec();
    let line = feed.stderr.snapshot().into_iter().find(|l| l.contains(words)).unwrap_or_default();
    eprintln!("TLS 1.1 server: log: {line}; server saw: {server_side:?}");
    assert!(named, "no log line saying {words:?}; stderr:\n{}", feed.stderr_text());
    assert!(refused, "the server saw no refused handshake: {server_side:?}");
    assert!(!server_side.iter().any(|l| l.starts_with("handshake")), "a handshake got through: {server_side:?}");
    assert!(market_lines(&feed.stdout.snapshot()).is_empty());
}

/// Proves a `--ca-file` that cannot be used is refused at start with exit 2, naming the flag,
/// the path and the fix, before any connection: missing, not PEM, and PEM without a certificate.
#[test]
fn an_unusable_ca_file_is_exit_2_naming_the_flag_and_the_path() {
    let dir = TempDir::new("tls-bad-ca");
    let missing = dir.0.join("missing.pem");
    let text = write(&dir, "text.pem", "not a certificate at all\n");
    let key_only = write(&dir, "key.pem", &KeyPair::generate().expect("key").serialize_pem());
    for (path, problem) in
        [(&missing, "cannot read it"), (&text, "holds no PEM certificate"), (&key_only, "but no CERTIFICATE")]
    {
        let out = Command::new(crate::harness::bin())
            .args(["--symbols", "BITSTAMP_SPOT_BTC_USD", "--ca-file"])
            .arg(path)
            .env("COINAPI_KEY", crate::harness::KEY)
            .stdin(Stdio::null())
            .output()
            .expect("run coinfeed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(out.stdout.is_empty());
        let shown = path.display().to_string();
        for words in ["error: --ca-file: ", shown.as_str(), problem, "drop --ca-file to use the built-in web roots"] {
            assert!(stderr.contains(words), "{}: stderr should say {words:?}:\n{stderr}", path.display());
        }
        assert!(!stderr.contains(crate::harness::KEY));
    }
}

/// Proves the REST client checks certificates against the same roots: with a valid `wss://`
/// and an `https://` server whose certificate comes from another CA, a gap's recovery attempt
/// is refused in the same words (a failed attempt of the gap, not a crash), and no request
/// reaches the REST server behind the front.
#[test]
fn an_untrusted_rest_certificate_fails_the_recovery_attempt_by_name() {
    let dir = TempDir::new("tls-rest");
    let ca = TestCa::new("coinfeed test CA");
    let other_ca = TestCa::new("some other CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let symbol = "SIMX_SPOT_TLSREST_USD";
    let sim = Sim::start(SimConfig { symbols: vec![symbol.to_string()], rate_per_sec: 100, ..SimConfig::default() })
        .expect("sim");
    let ws_front = TlsFront::start(server_tls(&ca.issue(LOOPBACK_NAMES, false)), sim.ws_addr()).expect("ws front");
    let rest_id = other_ca.issue(LOOPBACK_NAMES, false);
    let rest_front = TlsFront::start(server_tls(&rest_id), sim.rest_addr()).expect("rest front");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let extra = ["--ca-file", ca_arg.as_str(), "--recovery-max-attempts", "2"];
    let mut feed = Feed::against(&wss(&ws_front), &https(&rest_front), symbol, "trade", &extra);
    assert!(feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 20), "{}", feed.stderr_text());
    sim.inject(WsFault::WithholdTrades { symbol_id: symbol.to_string(), duration: Duration::from_secs(2) });
    let words = "failed: request failed: tls: the server's certificate has an unknown issuer";
    let named = feed.stderr.wait_until(Duration::from_secs(30), |l| l.iter().any(|l| l.contains(words)));
    assert!(named, "no log line saying {words:?}; stderr:\n{}", feed.stderr_text());
    let line = feed.stderr.snapshot().into_iter().find(|l| l.contains(words)).unwrap_or_default();
    eprintln!("untrusted REST certificate: {line}; rest front: {:?}", rest_front.handshakes());
    feed.signal("INT");
    let (status, _) = feed.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!rest_front.handshakes().is_empty() && rest_front.handshakes().iter().all(|h| h.result.is_err()));
    assert!(
        crate::harness::rest_requests(&sim).is_empty(),
        "a request got through: {:?}",
        crate::harness::rest_requests(&sim)
    );
    assert!(rest_lines(&feed.stdout.snapshot()).is_empty());
}

/// Proves `coinfeed sim --tls-cert --tls-key` serves wss:// and https://: its printed URLs are
/// TLS ones, and coinfeed with --ca-file streams from them.
#[test]
fn the_standalone_simulator_serves_tls_from_pem_files() {
    let dir = TempDir::new("tls-standalone");
    let ca = TestCa::new("coinfeed test CA");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let id = ca.issue(LOOPBACK_NAMES, false);
    let chain = write(&dir, "chain.pem", &id.chain);
    let key = write(&dir, "key.pem", &id.key);
    let sim_args: Vec<String> = ["sim", "--rate", "100", "--tls-cert"]
        .iter()
        .map(|s| s.to_string())
        .chain([chain.to_string_lossy().into_owned(), "--tls-key".into(), key.to_string_lossy().into_owned()])
        .collect();
    let mut sim = Feed::start(&sim_args, crate::harness::FeedOptions { key: None, ..Default::default() });
    assert!(sim.stdout.wait_until(Duration::from_secs(15), |l| !l.is_empty()), "{}", sim.stderr_text());
    let urls: serde_json::Value = serde_json::from_str(&sim.stdout.snapshot()[0]).expect("the URL line");
    let (ws, rest) = (urls["ws_url"].as_str().expect("ws_url"), urls["rest_url"].as_str().expect("rest_url"));
    assert!(ws.starts_with("wss://127.0.0.1:") && rest.starts_with("https://127.0.0.1:"), "{urls}");
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let mut feed = Feed::against(ws, rest, "BITSTAMP_SPOT_BTC_USD", "trade", &["--ca-file", &ca_arg]);
    let streamed = feed.stdout.wait_until(Duration::from_secs(20), |l| market_lines(l).len() >= 10);
    assert!(streamed, "no data from the standalone simulator over wss://; stderr:\n{}", feed.stderr_text());
    feed.signal("INT");
    feed.wait_exit(Duration::from_secs(10));
    sim.signal("INT");
    let (status, _) = sim.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", sim.stderr_text());
}
