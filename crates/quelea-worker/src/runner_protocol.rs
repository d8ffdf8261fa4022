//! The pipe protocol between the worker runtime and a runner process.
//!
//! The runtime writes to the runner's stdin; the runner answers on the stdout
//! it had at start-up, after pointing its own fd 1 at stderr so that user
//! `print`s cannot corrupt the stream. Every frame is
//! `u32 LE length-of-rest | u8 tag | body`, with integers little-endian:
//!
//! | tag | direction | body |
//! |---|---|---|
//! | `R` ready    | runner → runtime | `u32 version, u32 pid` |
//! | `F` function | runtime → runner | `u32 function_id, payload` (Rust: the registered name; Python: cloudpickle) |
//! | `C` call     | runtime → runner | `u32 function_id, u32 call_id, input` |
//! | `D` done     | runner → runtime | `u32 call_id, u8 outcome (0 ok, 1 error), u64 peak_rss_bytes, payload` |
//!
//! Calls are answered in the order they were sent, one `D` per `C`, each
//! flushed as soon as it is ready: the first unanswered call is the one
//! running, which is how the runtime knows whom a crash or timeout hits.
//! An error payload is JSON: `{"error_type", "message", "traceback", "payload"?}`
//! where `payload` is the base64 of the runner's own encoding of the exception.

use std::io::{self, Read, Write};

/// The version a runner announces in its ready frame.
pub const RUNNER_PROTOCOL_VERSION: u32 = 1;

/// Frames are capped so a corrupt length cannot make the runtime allocate wildly.
pub const MAX_FRAME: usize = 1 << 31;

pub const TAG_READY: u8 = b'R';
pub const TAG_FUNCTION: u8 = b'F';
pub const TAG_CALL: u8 = b'C';
pub const TAG_DONE: u8 = b'D';

/// A frame the runtime receives from a runner.
#[derive(Debug, PartialEq)]
pub enum FromRunner {
    Ready {
        version: u32,
        pid: u32,
    },
    Done {
        call_id: u32,
        ok: bool,
        peak_rss: u64,
        payload: Vec<u8>,
    },
}

/// A frame a runner receives from the runtime.
#[derive(Debug, PartialEq)]
pub enum ToRunner {
    Function {
        function_id: u32,
        payload: Vec<u8>,
    },
    Call {
        function_id: u32,
        call_id: u32,
        input: Vec<u8>,
    },
}

fn header(out: &mut Vec<u8>, tag: u8, body_len: usize) {
    out.extend_from_slice(&((body_len + 1) as u32).to_le_bytes());
    out.push(tag);
}

pub fn encode_function(out: &mut Vec<u8>, function_id: u32, payload: &[u8]) {
    header(out, TAG_FUNCTION, 4 + payload.len());
    out.extend_from_slice(&function_id.to_le_bytes());
    out.extend_from_slice(payload);
}

pub fn encode_call(out: &mut Vec<u8>, function_id: u32, call_id: u32, input: &[u8]) {
    header(out, TAG_CALL, 8 + input.len());
    out.extend_from_slice(&function_id.to_le_bytes());
    out.extend_from_slice(&call_id.to_le_bytes());
    out.extend_from_slice(input);
}

pub fn encode_ready(out: &mut Vec<u8>, pid: u32) {
    header(out, TAG_READY, 8);
    out.extend_from_slice(&RUNNER_PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&pid.to_le_bytes());
}

pub fn encode_done(out: &mut Vec<u8>, call_id: u32, ok: bool, peak_rss: u64, payload: &[u8]) {
    header(out, TAG_DONE, 13 + payload.len());
    out.extend_from_slice(&call_id.to_le_bytes());
    out.push(if ok { 0 } else { 1 });
    out.extend_from_slice(&peak_rss.to_le_bytes());
    out.extend_from_slice(payload);
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads one frame: `Ok(None)` on a clean end of stream.
fn read_frame(reader: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(format!("frame length {len} out of range")));
    }
    let mut tag = [0u8; 1];
    reader.read_exact(&mut tag)?;
    let mut body = vec![0u8; len - 1];
    reader.read_exact(&mut body)?;
    Ok(Some((tag[0], body)))
}

fn u32_at(body: &[u8], at: usize) -> io::Result<u32> {
    body.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| invalid("frame too short".into()))
}

fn u64_at(body: &[u8], at: usize) -> io::Result<u64> {
    body.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| invalid("frame too short".into()))
}

pub fn read_from_runner(reader: &mut impl Read) -> io::Result<Option<FromRunner>> {
    let Some((tag, body)) = read_frame(reader)? else {
        return Ok(None);
    };
    match tag {
        TAG_READY => Ok(Some(FromRunner::Ready {
            version: u32_at(&body, 0)?,
            pid: u32_at(&body, 4)?,
        })),
        TAG_DONE => {
            let call_id = u32_at(&body, 0)?;
            let ok = *body
                .get(4)
                .ok_or_else(|| invalid("frame too short".into()))?
                == 0;
            let peak_rss = u64_at(&body, 5)?;
            let mut payload = body;
            payload.drain(..13);
            Ok(Some(FromRunner::Done {
                call_id,
                ok,
                peak_rss,
                payload,
            }))
        }
        other => Err(invalid(format!(
            "unexpected frame tag {other:#04x} from runner"
        ))),
    }
}

pub fn read_to_runner(reader: &mut impl Read) -> io::Result<Option<ToRunner>> {
    let Some((tag, body)) = read_frame(reader)? else {
        return Ok(None);
    };
    match tag {
        TAG_FUNCTION => {
            let function_id = u32_at(&body, 0)?;
            let mut payload = body;
            payload.drain(..4);
            Ok(Some(ToRunner::Function {
                function_id,
                payload,
            }))
        }
        TAG_CALL => {
            let function_id = u32_at(&body, 0)?;
            let call_id = u32_at(&body, 4)?;
            let mut input = body;
            input.drain(..8);
            Ok(Some(ToRunner::Call {
                function_id,
                call_id,
                input,
            }))
        }
        other => Err(invalid(format!(
            "unexpected frame tag {other:#04x} from runtime"
        ))),
    }
}

/// Writes a whole buffer; a broken pipe reports the runner gone.
pub fn write_all(writer: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_function(&mut buf, 3, b"add");
        encode_call(&mut buf, 3, 42, b"[1,2]");
        let mut r = &buf[..];
        assert_eq!(
            read_to_runner(&mut r).unwrap(),
            Some(ToRunner::Function {
                function_id: 3,
                payload: b"add".to_vec()
            })
        );
        assert_eq!(
            read_to_runner(&mut r).unwrap(),
            Some(ToRunner::Call {
                function_id: 3,
                call_id: 42,
                input: b"[1,2]".to_vec()
            })
        );
        assert_eq!(read_to_runner(&mut r).unwrap(), None);

        let mut buf = Vec::new();
        encode_ready(&mut buf, 77);
        encode_done(&mut buf, 42, false, 1 << 20, b"{}");
        let mut r = &buf[..];
        assert_eq!(
            read_from_runner(&mut r).unwrap(),
            Some(FromRunner::Ready {
                version: RUNNER_PROTOCOL_VERSION,
                pid: 77
            })
        );
        assert_eq!(
            read_from_runner(&mut r).unwrap(),
            Some(FromRunner::Done {
                call_id: 42,
                ok: false,
                peak_rss: 1 << 20,
                payload: b"{}".to_vec()
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut r = &[0u8, 0, 0, 0][..];
        assert!(read_from_runner(&mut r).is_err());
        let mut r = &[2u8, 0, 0, 0, b'Z', 0][..];
        assert!(read_from_runner(&mut r).is_err());
        let mut r = &[9u8, 0, 0, 0, b'D', 0][..];
        assert!(read_from_runner(&mut r).is_err());
    }
}
