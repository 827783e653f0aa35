//! An LDAPS proxy in front of the test DC that injects directory faults Samba cannot be made to produce on
//! demand: a write answered busy (51) or unavailable (52), or the connection dropped at a chosen write,
//! before or after the DC performed it. It can also answer as Windows AD does for large groups, with
//! `member` cut into ranges (`member;range=0-1499`), which Samba never does unasked.
//!
//! It can also stand for a DC in another site: every message, both ways, is handed on a set time after it
//! arrived, without holding up the messages behind it, as a network link does.
//!
//! It terminates TLS with the DC's own certificate (so the agent verifies it exactly as it verifies the DC),
//! opens its own TLS connection to the DC, and forwards whole LDAP messages both ways. Only the messages it
//! is told to fault are answered by the proxy itself; everything else is the DC's real answer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::dc::TestDc;

/// What the proxy does to a faulted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers it with this LDAP result code; the DC never sees the request.
    Result(u8),
    /// Closes the agent's connection without forwarding it.
    Drop,
    /// Forwards it, then closes the agent's connection in place of the DC's answer: the write happened, but
    /// the agent cannot know.
    LoseAnswer,
    /// Forwards it this late, as a DC busy with other work answers.
    Delay(std::time::Duration),
}

/// LDAP result code 51.
pub const BUSY: Fault = Fault::Result(51);
/// LDAP result code 52.
pub const UNAVAILABLE: Fault = Fault::Result(52);

/// Which writes to fault, counted across every connection through the proxy.
#[derive(Debug, Default)]
struct Schedule {
    /// Writes still to forward before faulting starts.
    pass: usize,
    /// Writes still to fault.
    remaining: usize,
    fault: Option<Fault>,
    /// Writes faulted so far.
    injected: usize,
    /// Return at most this many `member` values per search entry, as a `member;range=0-{n-1}` attribute.
    member_range: Option<usize>,
    /// Search entries whose members were cut into a range so far.
    ranged: usize,
    /// How long each message takes through the proxy, each way.
    latency: std::time::Duration,
    /// The most writes of one connection that were sent on to the DC and not yet answered to the agent.
    most_writes_in_flight: usize,
    /// Every search request from the agent, whole.
    searches: Vec<Vec<u8>>,
}

impl Schedule {
    /// The fault for the next write, if it is one to fault.
    fn next_write(&mut self) -> Option<Fault> {
        if self.pass > 0 {
            self.pass -= 1;
            return None;
        }
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.injected += 1;
        self.fault
    }
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    url: String,
    schedule: Arc<Mutex<Schedule>>,
    stop: Option<oneshot::Sender<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `dc`, forwarding everything until told otherwise.
    pub fn start(dc: &TestDc) -> Result<FaultProxy> {
        let (cert, key) = dc.tls_identity()?;
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&cert, &key)?));
        let connector = TlsConnector::from(Arc::new(client_config(&dc.info().ca_file)?));
        let upstream: SocketAddr =
            dc.info().url.trim_start_matches("ldaps://").parse().context("parsing the DC's LDAPS address")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the LDAP proxy")?;
        listener.set_nonblocking(true)?;
        let url = format!("ldaps://127.0.0.1:{}", listener.local_addr()?.port());
        let schedule = Arc::new(Mutex::new(Schedule::default()));
        let (stop, stopped) = oneshot::channel();
        let relay = Relay { acceptor, connector, upstream, schedule: schedule.clone() };
        // A runtime of its own, so the proxy serves whatever runtime flavour (or blocking call) the test uses.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("ldap-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                tokio::select! {
                    () = relay.accept_forever(listener) => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(FaultProxy { url, schedule, stop: Some(stop) })
    }

    /// The `ldaps://` URL the agent should use instead of the DC's.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Forwards the next `pass` writes, then applies `fault` to the `count` writes after them.
    pub fn inject(&self, pass: usize, count: usize, fault: Fault) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        schedule.pass = pass;
        schedule.remaining = count;
        schedule.fault = Some(fault);
    }

    /// Stops faulting: every later write reaches the DC.
    pub fn heal(&self) {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).remaining = 0;
    }

    /// From now on, search entries with more than `size` `member` values carry only the first `size` of them,
    /// as `member;range=0-{size-1}`, as Windows AD answers for groups larger than its MaxValRange. The DC
    /// itself answers the follow-up `member;range={size}-*` reads.
    pub fn split_members(&self, size: usize) {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).member_range = Some(size.max(1));
    }

    /// From now on, hands every message on `latency` after it arrived, both ways, as a link to a DC in another
    /// site would (a round trip then takes twice `latency` more).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).latency = latency;
    }

    /// The most writes one connection had sent on to the DC and not yet seen answered at any moment.
    pub fn most_writes_in_flight(&self) -> usize {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).most_writes_in_flight
    }

    /// How many searches the agent sent, and how many of them asked for paged results.
    pub fn searches(&self) -> (usize, usize) {
        (self.searches_with(b""), self.searches_with(PAGED_RESULTS))
    }

    /// How many searches held `bytes` as they are: a control's type is its OID in text, and a filter carries
    /// its attribute names and values unencoded. A paged search counts once, not once per page.
    pub fn searches_with(&self, bytes: &[u8]) -> usize {
        let schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let holds = |m: &[u8]| bytes.is_empty() || m.windows(bytes.len()).any(|w| w == bytes);
        schedule.searches.iter().filter(|m| holds(m) && !continues_paging(m)).count()
    }

    /// How many search entries had their members cut into a range.
    pub fn ranged(&self) -> usize {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).ranged
    }

    /// How many writes have been faulted since the proxy started.
    pub fn injected(&self) -> usize {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner()).injected
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A plain-LDAP server that refuses StartTLS, as a DC without a certificate does, and counts the binds it is
/// offered anyway: a client that binds after the refusal would send its password in clear text.
pub struct NoStartTls {
    url: String,
    binds: Arc<Mutex<usize>>,
    stop: Option<oneshot::Sender<()>>,
}

impl NoStartTls {
    /// Starts the server on a free loopback port.
    pub fn start() -> Result<NoStartTls> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the plain LDAP server")?;
        listener.set_nonblocking(true)?;
        let url = format!("ldap://127.0.0.1:{}", listener.local_addr()?.port());
        let binds = Arc::new(Mutex::new(0));
        let (stop, stopped) = oneshot::channel();
        let counted = binds.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("ldap-no-starttls".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                let serve = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(refuse_starttls(client, counted.clone()));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(NoStartTls { url, binds, stop: Some(stop) })
    }

    /// The `ldap://` URL of the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many bind requests arrived.
    pub fn binds(&self) -> usize {
        *self.binds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NoStartTls {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Answers every extended request (StartTLS) with protocolError, as RFC 4511 asks of a server that does not
/// support it, and every bind with success, to tempt a client into binding in clear text.
async fn refuse_starttls(mut client: TcpStream, binds: Arc<Mutex<usize>>) {
    while let Ok(Some(message)) = read_message(&mut client).await {
        let Some(id) = message_id(&message).map(<[u8]>::to_vec) else { return };
        let operation = body(&message).and_then(|b| b.get(2 + id.len())).copied();
        let response_tag = match operation {
            Some(0x77) => 0x78,
            Some(0x60) => {
                *binds.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                0x61
            }
            _ => return,
        };
        let code = if response_tag == 0x78 { 2 } else { 0 };
        let answer = WriteRequest { message_id: id, response_tag }.answer(code);
        if send(&mut client, &answer).await.is_err() {
            return;
        }
    }
}

struct Relay {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: SocketAddr,
    schedule: Arc<Mutex<Schedule>>,
}

impl Relay {
    async fn accept_forever(self, listener: TcpListener) {
        let relay = Arc::new(self);
        while let Ok((client, _)) = listener.accept().await {
            let relay = relay.clone();
            tokio::spawn(async move {
                if let Err(e) = relay.serve(client).await {
                    tracing::debug!("ldap proxy connection ended: {e:#}");
                }
            });
        }
    }

    async fn serve(&self, client: TcpStream) -> Result<()> {
        // Nagle's algorithm off both ways, as the DC and the clients have it: the proxy's own latency is the
        // only one it adds.
        client.set_nodelay(true)?;
        let client = self.acceptor.accept(client).await.context("TLS with the agent")?;
        let upstream = TcpStream::connect(self.upstream).await.context("connecting to the DC")?;
        upstream.set_nodelay(true)?;
        let upstream = self
            .connector
            .connect(ServerName::IpAddress(self.upstream.ip().into()), upstream)
            .await
            .context("TLS with the DC")?;
        let (from_client, to_client) = tokio::io::split(client);
        let (from_dc, mut to_dc) = tokio::io::split(upstream);
        let mut from_client = Inbox::start(from_client, &self.schedule);
        let mut from_dc = Inbox::start(from_dc, &self.schedule);
        let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
        // The message id whose answer is to be lost, with the connection, instead of delivered.
        let lose: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        // The message ids of the writes sent on to the DC and not yet answered.
        let in_flight: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
        let replies = {
            let (to_client, lose, schedule, in_flight) =
                (to_client.clone(), lose.clone(), self.schedule.clone(), in_flight.clone());
            tokio::spawn(async move {
                while let Some(message) = from_dc.next().await {
                    let mut to_client = to_client.lock().await;
                    let lost = lose
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_deref()
                        .is_some_and(|id| message_id(&message) == Some(id));
                    if lost {
                        let _ = to_client.shutdown().await;
                        break;
                    }
                    let range = schedule.lock().unwrap_or_else(|e| e.into_inner()).member_range;
                    let message = match range.and_then(|size| cut_members(&message, size)) {
                        Some(cut) => {
                            schedule.lock().unwrap_or_else(|e| e.into_inner()).ranged += 1;
                            cut
                        }
                        None => message,
                    };
                    if send(&mut *to_client, &message).await.is_err() {
                        break;
                    }
                    if let Some(id) = message_id(&message) {
                        in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                    }
                }
            })
        };
        let outcome = async {
            while let Some(message) = from_client.next().await {
                if operation(&message) == Some(0x63) {
                    self.schedule.lock().unwrap_or_else(|e| e.into_inner()).searches.push(message.clone());
                }
                let write = write_request(&message);
                let fault = match &write {
                    Some(_) => self.schedule.lock().unwrap_or_else(|e| e.into_inner()).next_write(),
                    None => None,
                };
                if fault.is_none()
                    && let Some(request) = &write
                {
                    let mut in_flight = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    in_flight.insert(request.message_id.clone());
                    let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
                    schedule.most_writes_in_flight = schedule.most_writes_in_flight.max(in_flight.len());
                }
                match fault.zip(write) {
                    None => send(&mut to_dc, &message).await?,
                    Some((Fault::Result(code), request)) => {
                        send(&mut *to_client.lock().await, &request.answer(code)).await?
                    }
                    Some((Fault::Drop, _)) => break,
                    Some((Fault::LoseAnswer, request)) => {
                        *lose.lock().unwrap_or_else(|e| e.into_inner()) = Some(request.message_id);
                        send(&mut to_dc, &message).await?;
                    }
                    Some((Fault::Delay(late), _)) => {
                        tokio::time::sleep(late).await;
                        send(&mut to_dc, &message).await?;
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        replies.abort();
        outcome
    }
}

/// The whole messages read from one side of a connection, each given out no earlier than the proxy's latency
/// after it arrived. A task of its own reads them as they come, so a message waiting out its latency does not
/// hold up the arrival times of those behind it.
struct Inbox {
    arrived: tokio::sync::mpsc::UnboundedReceiver<(tokio::time::Instant, Vec<u8>)>,
    schedule: Arc<Mutex<Schedule>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Inbox {
    fn start(mut from: impl AsyncRead + Unpin + Send + 'static, schedule: &Arc<Mutex<Schedule>>) -> Inbox {
        let (sender, arrived) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = read_message(&mut from).await {
                if sender.send((tokio::time::Instant::now(), message)).is_err() {
                    break;
                }
            }
        });
        Inbox { arrived, schedule: schedule.clone(), reader }
    }

    /// The next message, once its latency has passed; `None` when the side closed or broke.
    async fn next(&mut self) -> Option<Vec<u8>> {
        let (at, message) = self.arrived.recv().await?;
        let latency = self.schedule.lock().unwrap_or_else(|e| e.into_inner()).latency;
        tokio::time::sleep_until(at + latency).await;
        Some(message)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message).await?;
    stream.flush().await
}

/// Reads one whole BER-framed LDAP message; `None` at a clean end of stream.
async fn read_message(stream: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut tag = [0u8; 1];
    if stream.read(&mut tag).await? == 0 {
        return Ok(None);
    }
    let mut message = vec![tag[0], stream.read_u8().await?];
    let length = match message[1] {
        short @ 0..0x80 => usize::from(short),
        long => {
            let mut bytes = vec![0u8; usize::from(long & 0x7f)];
            if bytes.len() > 4 {
                bail!("an LDAP message longer than 4 GB");
            }
            stream.read_exact(&mut bytes).await?;
            message.extend_from_slice(&bytes);
            bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
        }
    };
    let start = message.len();
    message.resize(start + length, 0);
    stream.read_exact(&mut message[start..]).await?;
    Ok(Some(message))
}

/// A write request seen on the wire: its message id and the tag its response carries.
struct WriteRequest {
    message_id: Vec<u8>,
    response_tag: u8,
}

impl WriteRequest {
    /// The LDAP message answering this request with `code` and no matched DN.
    fn answer(&self, code: u8) -> Vec<u8> {
        let text = b"injected by the test proxy";
        let mut result = vec![0x0a, 1, code, 0x04, 0];
        result.extend(tlv(0x04, text));
        let mut body = tlv(0x02, &self.message_id);
        body.extend(tlv(self.response_tag, &result));
        tlv(0x30, &body)
    }
}

/// The body of an LDAP message: its message id's TLV, then the operation.
fn body(message: &[u8]) -> Option<&[u8]> {
    let header = if message.get(1)? & 0x80 == 0 { 2 } else { 2 + usize::from(message[1] & 0x7f) };
    message.get(header..).filter(|body| body.first() == Some(&0x02))
}

/// The message id's content octets.
fn message_id(message: &[u8]) -> Option<&[u8]> {
    let body = body(message)?;
    body.get(2..2 + usize::from(*body.get(1)?))
}

/// The paged results control's type (RFC 2696).
const PAGED_RESULTS: &[u8] = b"1.2.840.113556.1.4.319";

/// Whether `message` asks for a later page of a paged search: its paged results control carries a cookie.
fn continues_paging(message: &[u8]) -> bool {
    let Some(at) = message.windows(PAGED_RESULTS.len()).position(|w| w == PAGED_RESULTS) else { return false };
    // The control goes on after its type: an optional criticality, then its value, which wraps
    // SEQUENCE { size INTEGER, cookie OCTET STRING }.
    let mut rest = &message[at + PAGED_RESULTS.len()..];
    if let Some((0x01, _, after)) = split_tlv(rest) {
        rest = after;
    }
    let cookie = (|| {
        let (0x04, value, _) = split_tlv(rest)? else { return None };
        let (0x30, sequence, _) = split_tlv(value)? else { return None };
        let (0x02, _, after) = split_tlv(sequence)? else { return None };
        let (0x04, cookie, _) = split_tlv(after)? else { return None };
        Some(cookie)
    })();
    cookie.is_some_and(|cookie| !cookie.is_empty())
}

/// The tag of the operation in `message`.
fn operation(message: &[u8]) -> Option<u8> {
    let id = message_id(message)?;
    body(message)?.get(2 + id.len()).copied()
}

/// The write request in `message`, if it is one: add, modify, delete or modify DN.
fn write_request(message: &[u8]) -> Option<WriteRequest> {
    let message_id = message_id(message)?.to_vec();
    let response_tag = match operation(message)? {
        0x66 => 0x67, // modify
        0x68 => 0x69, // add
        0x4a => 0x6b, // delete (its request is primitive, its response constructed)
        0x6c => 0x6d, // modify DN
        _ => return None,
    };
    Some(WriteRequest { message_id, response_tag })
}

/// One BER element at the start of `bytes`: its tag, its contents and what follows it.
fn split_tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)?;
    let (length, header) = if first & 0x80 == 0 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        let length = bytes.get(2..2 + count)?.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, 2 + count)
    };
    let contents = bytes.get(header..header + length)?;
    Some((tag, contents, &bytes[header + length..]))
}

/// `message` with its `member` values cut to the first `size`, renamed `member;range=0-{size-1}`, when it is
/// a search result entry with more values than that; `None` otherwise.
fn cut_members(message: &[u8], size: usize) -> Option<Vec<u8>> {
    let (0x30, body, _) = split_tlv(message)? else { return None };
    let (0x02, id, rest) = split_tlv(body)? else { return None };
    let (0x64, entry, controls) = split_tlv(rest)? else { return None };
    let (0x04, name, attributes) = split_tlv(entry)? else { return None };
    let (0x30, mut list, _) = split_tlv(attributes)? else { return None };
    let mut rebuilt = Vec::new();
    let mut cut = false;
    while !list.is_empty() {
        let (0x30, attribute, next) = split_tlv(list)? else { return None };
        list = next;
        let (0x04, kind, values) = split_tlv(attribute)? else { return None };
        let (0x31, mut set, _) = split_tlv(values)? else { return None };
        let mut kept = Vec::new();
        let mut count = 0;
        while !set.is_empty() {
            let (tag, value, next) = split_tlv(set)?;
            set = next;
            if count < size {
                kept.extend(tlv(tag, value));
            }
            count += 1;
        }
        if kind.eq_ignore_ascii_case(b"member") && count > size {
            cut = true;
            let ranged = format!("member;range=0-{}", size - 1);
            rebuilt.extend(tlv(0x30, &[tlv(0x04, ranged.as_bytes()), tlv(0x31, &kept)].concat()));
        } else {
            rebuilt.extend(tlv(0x30, attribute));
        }
    }
    if !cut {
        return None;
    }
    let entry = [tlv(0x04, name), tlv(0x30, &rebuilt)].concat();
    let body = [tlv(0x02, id), tlv(0x64, &entry), controls.to_vec()].concat();
    Some(tlv(0x30, &body))
}

/// A BER tag-length-value with a definite length.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(value.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = value.len().to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    out.extend_from_slice(value);
    out
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

fn client_config(ca: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_answer_is_a_well_formed_response_to_the_request() {
        // A modify request with message id 7 (the rest of the request does not matter to the proxy).
        let modify = tlv(0x30, &[tlv(0x02, &[7]), tlv(0x66, &[0x04, 0])].concat());
        let request = write_request(&modify).expect("a modify is a write");
        let answer = request.answer(51);
        let expected_result = [vec![0x0a, 1, 51, 0x04, 0], tlv(0x04, b"injected by the test proxy")].concat();
        assert_eq!(answer, tlv(0x30, &[tlv(0x02, &[7]), tlv(0x67, &expected_result)].concat()));
        let search = tlv(0x30, &[tlv(0x02, &[8]), tlv(0x63, &[0x04, 0])].concat());
        assert!(write_request(&search).is_none(), "a search is not a write");
    }

    #[test]
    fn member_values_past_the_range_size_are_cut_into_a_first_range() {
        let attribute = |name: &str, values: &[&str]| {
            let set: Vec<u8> = values.iter().flat_map(|v| tlv(0x04, v.as_bytes())).collect();
            tlv(0x30, &[tlv(0x04, name.as_bytes()), tlv(0x31, &set)].concat())
        };
        let entry = |attributes: Vec<u8>| {
            let entry = [tlv(0x04, b"CN=g,DC=x"), tlv(0x30, &attributes)].concat();
            tlv(0x30, &[tlv(0x02, &[9]), tlv(0x64, &entry)].concat())
        };
        let cn = attribute("cn", &["g"]);
        let full = entry([cn.clone(), attribute("member", &["a", "b", "c"])].concat());
        let cut = cut_members(&full, 2).expect("three members exceed a range of two");
        assert_eq!(cut, entry([cn.clone(), attribute("member;range=0-1", &["a", "b"])].concat()));
        assert!(cut_members(&full, 3).is_none(), "a group within the range size is left whole");
        let search_done = tlv(0x30, &[tlv(0x02, &[9]), tlv(0x65, &[0x0a, 1, 0, 0x04, 0, 0x04, 0])].concat());
        assert!(cut_members(&search_done, 1).is_none());
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let value = vec![0u8; 300];
        assert_eq!(&tlv(0x04, &value)[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn faults_start_after_the_writes_that_pass_and_stop_after_the_count() {
        let mut schedule = Schedule { pass: 1, remaining: 2, fault: Some(BUSY), ..Default::default() };
        let seen: Vec<_> = (0..4).map(|_| schedule.next_write()).collect();
        assert_eq!(seen, [None, Some(BUSY), Some(BUSY), None]);
        assert_eq!(schedule.injected, 2);
    }
}
