//! Shared fixture for the delivery tests: a relay (spool + scheduler) pointed at an in-test DNS
//! server and SMTP sinks on loopback.

#![allow(dead_code)]

pub mod auth_sink;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders, PartType};
use relayward_core::{TraceEvent, TraceKind};
use relayward_queue::{
    DeliveryConfig, DeliveryEvents, EgressRisk, Envelope, QueueId, Recipient, Scheduler, Spool,
};
use relayward_testkit::DnsServer;
use tokio::sync::watch;

/// Records every trace event.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<TraceEvent>>, AtomicUsize);

impl DeliveryEvents for Recorder {
    fn trace(&self, ev: TraceEvent) {
        if ev.kind == TraceKind::Delivered {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        self.0.lock().unwrap().push(ev);
    }
}

impl Recorder {
    pub fn delivered(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }

    pub fn all(&self) -> Vec<TraceEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn kinds_for(&self, rcpt: &str) -> Vec<TraceKind> {
        self.all()
            .into_iter()
            .filter(|e| e.recipient.as_deref() == Some(rcpt))
            .map(|e| e.kind)
            .collect()
    }

    pub fn count(&self, kind: TraceKind) -> usize {
        self.all().iter().filter(|e| e.kind == kind).count()
    }
}

pub struct Relay {
    pub dir: Arc<tempfile::TempDir>,
    pub spool: Arc<Spool>,
    pub events: Arc<Recorder>,
    pub scheduler: Arc<Scheduler>,
    shutdown: watch::Sender<bool>,
}

/// Test settings: 1 s retries, short timeouts, control directory polled every 200 ms.
pub fn config(dns: &DnsServer, port: u16) -> DeliveryConfig {
    DeliveryConfig {
        hostname: "relay.test".into(),
        mx_port: port,
        dns_resolver: Some(dns.addr()),
        retry_schedule: vec![Duration::from_secs(1)],
        max_lifetime: Duration::from_secs(600),
        delay_warning: None,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(3),
        data_timeout: Duration::from_secs(3),
        max_workers: 8,
        max_per_destination: 4,
        idle_connection_timeout: Duration::from_secs(2),
        control_poll_interval: Duration::from_millis(200),
        ..DeliveryConfig::default()
    }
}

impl Relay {
    pub fn start(config: DeliveryConfig) -> Relay {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        Relay::start_on(dir, spool, config)
    }

    pub fn start_on(
        dir: Arc<tempfile::TempDir>,
        spool: Arc<Spool>,
        config: DeliveryConfig,
    ) -> Relay {
        Relay::launch(dir, spool, config, None)
    }

    /// [`Relay::start`] with `risk` telling which tenants' mail leaves from the high-risk
    /// egress pool.
    pub fn start_with_risk(config: DeliveryConfig, risk: Arc<dyn EgressRisk>) -> Relay {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        Relay::launch(dir, spool, config, Some(risk))
    }

    fn launch(
        dir: Arc<tempfile::TempDir>,
        spool: Arc<Spool>,
        config: DeliveryConfig,
        risk: Option<Arc<dyn EgressRisk>>,
    ) -> Relay {
        let events = Arc::new(Recorder::default());
        let (shutdown, rx) = watch::channel(false);
        let scheduler = Scheduler::start(spool.clone(), config, events.clone(), risk, rx);
        Relay {
            dir,
            spool,
            events,
            scheduler,
            shutdown,
        }
    }

    /// Stops the scheduler and waits until it has.
    pub async fn stop(self) -> (Arc<tempfile::TempDir>, Arc<Spool>) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.scheduler.stopped())
            .await
            .expect("scheduler stops");
        (self.dir, self.spool)
    }

    /// Stores and submits a message.
    pub fn send(&self, sender: &str, rcpts: &[&str], body: &[u8]) -> QueueId {
        self.send_with(sender, rcpts, body, |_| {})
    }

    pub fn send_with(
        &self,
        sender: &str,
        rcpts: &[&str],
        body: &[u8],
        tweak: impl FnOnce(&mut Envelope),
    ) -> QueueId {
        let id = store(&self.spool, sender, rcpts, body, tweak);
        self.scheduler.submit(id);
        id
    }

    pub fn in_spool(&self) -> Vec<QueueId> {
        self.spool.scan().unwrap()
    }
}

/// Stores a message without submitting it.
pub fn store(
    spool: &Spool,
    sender: &str,
    rcpts: &[&str],
    body: &[u8],
    tweak: impl FnOnce(&mut Envelope),
) -> QueueId {
    let id = spool.new_queue_id();
    let mut env = Envelope {
        queue_id: id,
        received_at: relayward_core::now().0,
        tenant_id: Some(1),
        connector_id: Some(1),
        client_ip: "192.0.2.10".into(),
        helo: "client.test".into(),
        auth_user: None,
        tls: false,
        sender: sender.into(),
        original_sender: None,
        sender_class: if sender.is_empty() {
            relayward_core::SenderClass::Null
        } else {
            relayward_core::SenderClass::Registered
        },
        header_from_mismatch: false,
        spam_verdict: false,
        message_id: Some(format!("<{id}@client.test>")),
        size: body.len() as u64,
        body_8bit: false,
        smtputf8: false,
        dsn_ret: None,
        dsn_envid: None,
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        held: false,
    };
    tweak(&mut env);
    spool.store(&id, &env, body).unwrap();
    id
}

pub fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@origin.test>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@origin.test>\r\n\r\nHello.\r\n.leading dot\r\n"
    )
    .into_bytes()
}

pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A parsed DSN: the report's fields, per-message and per-recipient.
#[derive(Debug)]
pub struct Dsn {
    pub subject: String,
    pub human: String,
    pub per_message: Vec<(String, String)>,
    pub per_recipient: Vec<Vec<(String, String)>>,
    /// Content type of the third part ("message/rfc822" or "text/rfc822-headers") and its text.
    pub returned_type: String,
    pub returned: String,
}

impl Dsn {
    pub fn field(&self, name: &str) -> Option<&str> {
        field(&self.per_message, name)
    }

    pub fn rcpt_field(&self, rcpt: usize, name: &str) -> Option<&str> {
        field(&self.per_recipient[rcpt], name)
    }

    pub fn final_recipients(&self) -> Vec<String> {
        self.per_recipient
            .iter()
            .filter_map(|g| field(g, "final-recipient").map(str::to_string))
            .collect()
    }
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses a DSN with mail-parser and checks its RFC 3464 structure.
pub fn parse_dsn(data: &[u8]) -> Dsn {
    let msg = MessageParser::default().parse(data).expect("DSN parses");
    let ct = msg.content_type().expect("DSN has a content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let PartType::Multipart(children) = &msg.parts[0].body else {
        panic!("top part is not multipart")
    };
    assert_eq!(children.len(), 3, "human part, delivery-status, original");
    let part = |i: usize| &msg.parts[children[i] as usize];
    let human = part(0);
    assert_eq!(human.content_type().unwrap().ctype(), "text");
    let status = part(1);
    let sct = status.content_type().unwrap();
    assert_eq!(
        (sct.ctype(), sct.subtype()),
        ("message", Some("delivery-status"))
    );
    let raw = &msg.raw_message()[status.offset_body as usize..status.offset_end as usize];
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let mut groups: Vec<Vec<(String, String)>> = text
        .split("\n\n")
        .map(|g| {
            g.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect::<Vec<_>>()
        })
        .filter(|g: &Vec<(String, String)>| !g.is_empty())
        .collect();
    assert!(
        groups.len() >= 2,
        "per-message and per-recipient fields: {text}"
    );
    let per_message = groups.remove(0);
    let returned = part(2);
    let rct = returned.content_type().unwrap();
    let returned_type = format!("{}/{}", rct.ctype(), rct.subtype().unwrap_or(""));
    let returned_raw =
        &msg.raw_message()[returned.offset_body as usize..returned.offset_end as usize];
    Dsn {
        subject: msg.subject().unwrap_or("").to_string(),
        human: human.text_contents().unwrap_or("").to_string(),
        per_message,
        per_recipient: groups,
        returned_type,
        returned: String::from_utf8_lossy(returned_raw).into_owned(),
    }
}
