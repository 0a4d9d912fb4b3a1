//! The WAMP transport: the only module that knows WAMP message numbers and the WebSocket.
//!
//! It is a minimal WAMP v2 client (roles callee and publisher, `wamp.2.json` over WebSocket),
//! written on tokio-tungstenite. The project's design card chose `wamp_async` 0.3.1; this
//! module replaced it because its event loop cannot be kept alive from outside the crate:
//!
//! * **The defect that forced it:** `Core::recv` returns `Ok(msg?)` and `Core::event_loop`
//!   `break`s on any receive error, so one message it cannot deserialize ends the session. Its
//!   option/details dictionaries (`WampDict = HashMap<String, Arg>`) can only hold URIs, ids,
//!   *non-negative* integers, strings, bools, dicts and lists: a float or a negative integer in
//!   any `details` (which crossbar is free to add, and which WELCOME's `authextra` or an ERROR's
//!   details may carry) is such a message. Its WebSocket transport also treats a `Close` or
//!   `Pong` frame as an unexpected-response error.
//! * The other known defects are avoided by construction: there is no `rmp` (JSON only), every
//!   PUBLISH asks for an acknowledgement and the pending entry is removed on PUBLISHED or ERROR,
//!   the caller owns the connection state (no status to poll) and dropping a [`Connection`] drops
//!   the socket, and there is no RawSocket transport.
//!
//! The API is small on purpose: [`Connection::join`], a few senders, and [`Connection::next`],
//! which returns one parsed [`Incoming`] message. Unknown or malformed messages are returned as
//! [`Incoming::Other`] and logged by the caller, never fatal.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The only serializer this client speaks; crossbar translates for peers that use others.
pub(crate) const SUBPROTOCOL: &str = "wamp.2.json";

const HELLO: u64 = 1;
const WELCOME: u64 = 2;
const ABORT: u64 = 3;
const GOODBYE: u64 = 6;
const ERROR: u64 = 8;
const PUBLISH: u64 = 16;
const PUBLISHED: u64 = 17;
const SUBSCRIBE: u64 = 32;
const SUBSCRIBED: u64 = 33;
const EVENT: u64 = 36;
const CALL: u64 = 48;
const RESULT: u64 = 50;
const REGISTER: u64 = 64;
const REGISTERED: u64 = 65;
const INVOCATION: u64 = 68;
const YIELD: u64 = 70;

/// Failures of the WAMP connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WampError {
    #[error("cannot open WebSocket to {url}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("router at {url} did not accept subprotocol {SUBPROTOCOL}")]
    Subprotocol { url: String },
    #[error("router refused to join realm {realm:?}: {reason}")]
    Aborted { realm: String, reason: String },
    #[error("router did not answer within {0:?}")]
    Timeout(Duration),
    #[error("WebSocket failed")]
    Socket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("router closed the connection")]
    Closed,
}

impl WampError {
    /// The message with its causes, for logs (`Display` alone leaves the cause out).
    pub(crate) fn describe(&self) -> String {
        crate::error_with_causes(self)
    }
}

/// A message from the router, parsed just enough for the agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    Registered {
        request: u64,
        registration: u64,
    },
    Published {
        request: u64,
    },
    Invocation {
        request: u64,
        registration: u64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    /// ERROR: the router (or a callee) refused one of our requests.
    Error {
        /// Which kind of request it answers.
        to: Request,
        request: u64,
        error: String,
        args: Vec<Value>,
    },
    Subscribed {
        request: u64,
        subscription: u64,
    },
    Event {
        subscription: u64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Result {
        request: u64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Goodbye {
        reason: String,
    },
    Abort {
        reason: String,
    },
    /// Anything this client does not use, or could not parse.
    Other(String),
}

/// The requests of ours an ERROR can answer (its request type, by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Register,
    Subscribe,
    Publish,
    Call,
}

impl Request {
    fn from_message_type(number: u64) -> Option<Request> {
        match number {
            REGISTER => Some(Request::Register),
            SUBSCRIBE => Some(Request::Subscribe),
            PUBLISH => Some(Request::Publish),
            CALL => Some(Request::Call),
            _ => None,
        }
    }
}

impl Incoming {
    /// Parses one WAMP JSON message. Never fails: what it cannot read is [`Incoming::Other`].
    pub(crate) fn parse(text: &str) -> Incoming {
        let other = || Incoming::Other(text.chars().take(200).collect());
        let Ok(Value::Array(msg)) = serde_json::from_str::<Value>(text) else {
            return other();
        };
        let int = |i: usize| msg.get(i).and_then(Value::as_u64);
        let string = |i: usize| msg.get(i).and_then(Value::as_str).map(str::to_owned);
        let list = |i: usize| match msg.get(i) {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let object = |i: usize| match msg.get(i) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let parsed = match int(0) {
            Some(REGISTERED) => {
                int(1)
                    .zip(int(2))
                    .map(|(request, registration)| Incoming::Registered {
                        request,
                        registration,
                    })
            }
            Some(PUBLISHED) => int(1).map(|request| Incoming::Published { request }),
            Some(INVOCATION) => {
                int(1)
                    .zip(int(2))
                    .map(|(request, registration)| Incoming::Invocation {
                        request,
                        registration,
                        args: list(4),
                        kwargs: match msg.get(5) {
                            Some(Value::Object(m)) => m.clone(),
                            _ => Map::new(),
                        },
                    })
            }
            Some(ERROR) => int(1)
                .and_then(Request::from_message_type)
                .zip(int(2))
                .zip(string(4))
                .map(|((to, request), error)| Incoming::Error {
                    to,
                    request,
                    error,
                    args: list(5),
                }),
            Some(SUBSCRIBED) => {
                int(1)
                    .zip(int(2))
                    .map(|(request, subscription)| Incoming::Subscribed {
                        request,
                        subscription,
                    })
            }
            Some(EVENT) => int(1).map(|subscription| Incoming::Event {
                subscription,
                args: list(4),
                kwargs: object(5),
            }),
            Some(RESULT) => int(1).map(|request| Incoming::Result {
                request,
                args: list(3),
                kwargs: object(4),
            }),
            Some(GOODBYE) => string(2).map(|reason| Incoming::Goodbye { reason }),
            Some(ABORT) => string(2).map(|reason| Incoming::Abort { reason }),
            _ => None,
        };
        parsed.unwrap_or_else(other)
    }
}

/// The outgoing messages, as pure functions so their exact shape is tested.
pub(crate) mod msg {
    use super::*;

    /// HELLO: anonymous, the four roles an ocs agent has (autobahn's order).
    pub(crate) fn hello(realm: &str) -> Value {
        json!([HELLO, realm, {"roles": {
            "subscriber": {"features": {"pattern_based_subscription": true}},
            "publisher": {"features": {}},
            "caller": {"features": {}},
            "callee": {"features": {}},
        }}])
    }

    /// SUBSCRIBE; `options` e.g. `{}` or `{"match": "prefix"}`.
    pub(crate) fn subscribe(request: u64, topic: &str, options: &Value) -> Value {
        json!([SUBSCRIBE, request, options, topic])
    }

    /// CALL with positional and keyword arguments.
    pub(crate) fn call(
        request: u64,
        procedure: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Value {
        json!([CALL, request, {}, procedure, args, kwargs])
    }

    /// REGISTER with options `{}`: exact match, single callee (spec §3).
    pub(crate) fn register(request: u64, procedure: &str) -> Value {
        json!([REGISTER, request, {}, procedure])
    }

    /// PUBLISH with one positional argument and no kwargs, always acknowledged: the pending
    /// entry is removed on PUBLISHED or ERROR, and a router that stops acknowledging is noticed.
    pub(crate) fn publish(request: u64, topic: &str, arg: &Value) -> Value {
        json!([PUBLISH, request, {"acknowledge": true}, topic, [arg]])
    }

    /// YIELD with exactly one positional result and no kwargs (spec §3).
    pub(crate) fn yield_result(request: u64, result: Value) -> Value {
        json!([YIELD, request, {}, [result]])
    }

    /// ERROR answering an INVOCATION.
    pub(crate) fn invocation_error(request: u64, error: &str, text: &str) -> Value {
        json!([ERROR, INVOCATION, request, {}, error, [text]])
    }

    /// GOODBYE `wamp.close.normal`.
    pub(crate) fn goodbye() -> Value {
        json!([GOODBYE, {}, "wamp.close.normal"])
    }
}

/// One joined WAMP session over one WebSocket. Dropping it drops the socket.
pub(crate) struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_request: u64,
    send_timeout: Duration,
    /// The router's session id, for logs.
    pub(crate) session_id: u64,
}

impl Connection {
    /// Opens the WebSocket with subprotocol `wamp.2.json` and joins `realm` anonymously as
    /// callee and publisher. The whole handshake must finish within `timeout`: a stopped router
    /// whose kernel still accepts connections must not hang the caller.
    /// `wss://` URLs use TLS with the system's roots, plus `tls`'s (a private CA) if given.
    pub(crate) async fn join(
        url: &str,
        realm: &str,
        timeout: Duration,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, WampError> {
        tokio::time::timeout(timeout, Self::join_inner(url, realm, timeout, tls))
            .await
            .map_err(|_| WampError::Timeout(timeout))?
    }

    async fn join_inner(
        url: &str,
        realm: &str,
        send_timeout: Duration,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, WampError> {
        let connect_err = |source| WampError::Connect {
            url: url.to_owned(),
            source: Box::new(source),
        };
        let mut request = url.into_client_request().map_err(connect_err)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        // Small WAMP messages must not wait for Nagle (with delayed ACKs that is 40 ms each).
        let connector = tls.map(|t| tokio_tungstenite::Connector::Rustls(t.clone()));
        let (ws, response) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
                .await
                .map_err(connect_err)?;
        let accepted = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if accepted != Some(SUBPROTOCOL) {
            return Err(WampError::Subprotocol {
                url: url.to_owned(),
            });
        }
        let mut conn = Connection {
            ws,
            next_request: 0,
            send_timeout,
            session_id: 0,
        };
        conn.send(msg::hello(realm)).await?;
        loop {
            let text = conn.next_text().await?;
            let Ok(Value::Array(msg)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match msg.first().and_then(Value::as_u64) {
                Some(WELCOME) => {
                    conn.session_id = msg.get(1).and_then(Value::as_u64).unwrap_or(0);
                    return Ok(conn);
                }
                Some(ABORT) => {
                    return Err(WampError::Aborted {
                        realm: realm.to_owned(),
                        reason: msg.get(2).map(Value::to_string).unwrap_or_default(),
                    })
                }
                _ => continue,
            }
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    async fn send(&mut self, msg: Value) -> Result<(), WampError> {
        let text = msg.to_string();
        tracing::trace!(%text, "wamp send");
        // A router that stopped reading (SIGSTOP) fills the socket buffers; a bounded send turns
        // that into an error instead of a hang.
        match tokio::time::timeout(self.send_timeout, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WampError::Socket(Box::new(e))),
            Err(_) => Err(WampError::Timeout(self.send_timeout)),
        }
    }

    /// Sends REGISTER for `procedure` with options `{}`; returns the request id.
    pub(crate) async fn register(&mut self, procedure: &str) -> Result<u64, WampError> {
        let id = self.request_id();
        self.send(msg::register(id, procedure)).await?;
        Ok(id)
    }

    /// Sends SUBSCRIBE; returns the request id (SUBSCRIBED or ERROR answers it).
    pub(crate) async fn subscribe(
        &mut self,
        topic: &str,
        options: &Value,
    ) -> Result<u64, WampError> {
        let id = self.request_id();
        self.send(msg::subscribe(id, topic, options)).await?;
        Ok(id)
    }

    /// Sends CALL; returns the request id (RESULT or ERROR answers it).
    pub(crate) async fn call(
        &mut self,
        procedure: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Result<u64, WampError> {
        let id = self.request_id();
        self.send(msg::call(id, procedure, args, kwargs)).await?;
        Ok(id)
    }

    /// Sends an acknowledged PUBLISH with one positional argument; returns the request id.
    pub(crate) async fn publish(&mut self, topic: &str, arg: &Value) -> Result<u64, WampError> {
        let id = self.request_id();
        self.send(msg::publish(id, topic, arg)).await?;
        Ok(id)
    }

    /// Like [`Connection::publish`] but only buffers the message; [`Connection::flush`] sends.
    /// Many feed messages then cost one write instead of one each.
    pub(crate) async fn publish_buffered(
        &mut self,
        topic: &str,
        arg: &Value,
    ) -> Result<u64, WampError> {
        let id = self.request_id();
        let text = msg::publish(id, topic, arg).to_string();
        match tokio::time::timeout(self.send_timeout, self.ws.feed(Message::text(text))).await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => Err(WampError::Socket(Box::new(e))),
            Err(_) => Err(WampError::Timeout(self.send_timeout)),
        }
    }

    /// Writes what [`Connection::publish_buffered`] buffered.
    pub(crate) async fn flush(&mut self) -> Result<(), WampError> {
        match tokio::time::timeout(self.send_timeout, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WampError::Socket(Box::new(e))),
            Err(_) => Err(WampError::Timeout(self.send_timeout)),
        }
    }

    /// Answers an INVOCATION with exactly one positional result and no kwargs.
    pub(crate) async fn yield_result(
        &mut self,
        request: u64,
        result: Value,
    ) -> Result<(), WampError> {
        self.send(msg::yield_result(request, result)).await
    }

    /// Answers an INVOCATION with an error, e.g. `wamp.error.runtime_error`.
    pub(crate) async fn yield_error(
        &mut self,
        request: u64,
        error: &str,
        text: &str,
    ) -> Result<(), WampError> {
        self.send(msg::invocation_error(request, error, text)).await
    }

    /// Leaves the realm with `wamp.close.normal` and waits briefly for the router's GOODBYE.
    pub(crate) async fn leave(mut self, wait: Duration) {
        if self.send(msg::goodbye()).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            while let Ok(text) = self.next_text().await {
                if matches!(Incoming::parse(&text), Incoming::Goodbye { .. }) {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(wait, self.ws.close(None)).await;
    }

    /// The next message from the router. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Incoming, WampError> {
        let text = self.next_text().await?;
        Ok(Incoming::parse(&text))
    }

    async fn next_text(&mut self) -> Result<String, WampError> {
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Err(WampError::Closed),
                Some(Err(e)) => return Err(WampError::Socket(Box::new(e))),
                Some(Ok(Message::Text(t))) => {
                    tracing::trace!(text = %t.as_str(), "wamp recv");
                    return Ok(t.as_str().to_owned());
                }
                Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into_owned()),
                // Pings are answered by tungstenite itself on the next read or write.
                Some(Ok(_)) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_msgs(name: &str, dir: &str) -> Vec<Value> {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["wamp"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["dir"] == dir)
            .map(|w| w["msg"].clone())
            .collect()
    }

    #[test]
    fn outgoing_messages_have_the_shapes_of_the_vectors() {
        let agent = vector_msgs("01-agent-join.json", "agent->router");
        assert_eq!(msg::register(1, "observatory.fake-data1.ops"), agent[1]);
        assert_eq!(msg::register(2, "observatory.fake-data1"), agent[2]);
        assert_eq!(msg::hello("test_realm")[1], agent[0][1]);
        assert_eq!(msg::hello("test_realm")[0], 1);
        // The Python agent publishes with options {}; we always ask for an acknowledgement,
        // which crossbar answers with PUBLISHED and which changes nothing for subscribers.
        let hb = &agent[3];
        let ours = msg::publish(3, hb[3].as_str().unwrap(), &hb[4][0]);
        assert_eq!(ours[2], json!({"acknowledge": true}));
        assert_eq!(
            (&ours[0], &ours[1], &ours[3], &ours[4]),
            (&hb[0], &hb[1], &hb[3], &hb[4])
        );
        let status = vector_msgs("16-task-status-done.json", "agent->router");
        assert_eq!(msg::yield_result(13, status[0][3][0].clone()), status[0]);
        assert_eq!(
            msg::invocation_error(73, "wamp.error.runtime_error", "x"),
            json!([8, 68, 73, {}, "wamp.error.runtime_error", ["x"]])
        );
        assert_eq!(msg::goodbye(), json!([6, {}, "wamp.close.normal"]));
    }

    #[test]
    fn parses_the_messages_of_the_spec_vectors() {
        assert_eq!(
            Incoming::parse("[65, 1, 3062374726563323]"),
            Incoming::Registered {
                request: 1,
                registration: 3062374726563323
            }
        );
        assert_eq!(
            Incoming::parse(
                r#"[68, 5, 3062374726563323, {}, ["wait", "delay_task", {}], {"timeout": 0.5}]"#
            ),
            Incoming::Invocation {
                request: 5,
                registration: 3062374726563323,
                args: vec![json!("wait"), json!("delay_task"), json!({})],
                kwargs: json!({"timeout": 0.5}).as_object().unwrap().clone(),
            }
        );
        assert_eq!(
            Incoming::parse(
                r#"[8, 64, 1, {}, "wamp.error.procedure_already_exists", ["register for already registered procedure 'observatory.fake-data1.ops'"]]"#
            ),
            Incoming::Error {
                to: Request::Register,
                request: 1,
                error: "wamp.error.procedure_already_exists".into(),
                args: vec![json!(
                    "register for already registered procedure 'observatory.fake-data1.ops'"
                )],
            }
        );
        assert_eq!(
            Incoming::parse("[17, 3, 12345]"),
            Incoming::Published { request: 3 }
        );
        assert_eq!(
            Incoming::parse(r#"[6, {}, "wamp.close.normal"]"#),
            Incoming::Goodbye {
                reason: "wamp.close.normal".into()
            }
        );
    }

    /// wamp_async's defect: details with a float or a negative integer killed its event loop.
    /// Here they parse, and garbage is reported as `Other`, never as an error.
    #[test]
    fn details_with_floats_and_garbage_do_not_fail() {
        assert!(matches!(
            Incoming::parse(r#"[68, 7, 9, {"x_weird": -1.5, "n": -3}, ["status", "x"]]"#),
            Incoming::Invocation { request: 7, .. }
        ));
        assert!(matches!(Incoming::parse("not json"), Incoming::Other(_)));
        assert!(matches!(Incoming::parse("[999, 1]"), Incoming::Other(_)));
        assert!(matches!(Incoming::parse("{}"), Incoming::Other(_)));
        assert!(matches!(Incoming::parse("[65, -1, 2]"), Incoming::Other(_)));
        // An ERROR answering a request this client never sends (here UNSUBSCRIBE).
        assert!(matches!(
            Incoming::parse(r#"[8, 34, 1, {}, "wamp.error.no_such_subscription", []]"#),
            Incoming::Other(_)
        ));
    }
}
