//! An OTLP/HTTP receiver for the tests: decodes what the agent posts with OpenTelemetry's own
//! generated types (opentelemetry-proto), so that netmon's hand-written encoding is checked
//! against OpenTelemetry's field numbers, not against itself.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, any_value::Value},
    logs::v1::LogRecord,
};
use prost::Message;

/// An OTLP/HTTP receiver on loopback: decodes each POST with opentelemetry-proto, answers
/// 200, and passes the records on.
pub fn otlp_receiver() -> (String, mpsc::Receiver<LogRecord>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve_otlp(stream, &tx));
        }
    });
    (addr, rx)
}

fn serve_otlp(stream: TcpStream, tx: &mpsc::Sender<LogRecord>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /v1/logs HTTP/1.1"), "{line}");
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        assert_eq!(content_type, "application/x-protobuf");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request = ExportLogsServiceRequest::decode(body.as_slice())
            .expect("the body decodes as an OTLP ExportLogsServiceRequest");
        for rl in request.resource_logs {
            let resource = rl.resource.expect("a resource");
            assert!(
                resource
                    .attributes
                    .iter()
                    .any(|kv| kv.key == "service.name" && text(kv.value.as_ref()) == Some("netmon")),
                "{resource:?}"
            );
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    let _ = tx.send(r);
                }
            }
        }
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

pub fn text(v: Option<&AnyValue>) -> Option<&str> {
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

pub fn int(v: Option<&AnyValue>) -> Option<i64> {
    match v?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

pub fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a AnyValue> {
    r.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}
