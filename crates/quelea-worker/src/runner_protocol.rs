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
//! | `C` call     | runtime → runner | `u32 function_id, u32 call_id, u32 count, u32 select, input` |
//! | `D` done     | runner → runtime | `u32 call_id, u8 kind, u64 peak_rss_bytes, payload` |
//! | `E` environment | runtime → forked runner | `key=value` pairs, each ended by a NUL |
//!
//! `E` is the first frame to a runner the pool did not start itself but
//! adopted (forked from the client, see `pool::ForkedRunner`): what a
//! spawned runner finds in its environment, it reads there before it says
//! ready.
//!
//! A call is a *batch* of `count` consecutive elements of a job, starting at
//! element `call_id` (`count` 1: a single element, whose input is the
//! element's own). A batch's input is the front end's encoding of all its
//! elements: the engine's [`encode_batch_input`] framing (`QBAT`), or a
//! runner's own (the Python front end pickles the elements at once). With
//! `select` other than [`ALL`], the runner runs only element `select` of the
//! batch and answers it as a single call `call_id + select`: how the runtime
//! re-runs the elements of a batch whose process died, one per call.
//!
//! The answer's `kind`: 0 a single call's result, 1 a single call's error,
//! 2 every element of the batch succeeded and the payload is the runner's
//! encoding of all their values at once (shared by the elements), 3 each
//! element's own outcome: `u32 count`, then per element `u8 ok (0) or error
//! (1), u32 length, bytes`. A batch whose process dies fails as a whole
//! (the runtime then re-runs its elements apart); one element's exception is
//! only its own.
//!
//! Calls are answered in the order they were sent, one `D` per `C`, each
//! flushed as soon as it is ready: the first unanswered call is the one
//! running, which is how the runtime knows whom a crash or timeout hits.
//! An error payload is JSON: `{"error_type", "message", "traceback", "payload"?}`
//! where `payload` is the base64 of the runner's own encoding of the exception.

use std::io::{self, Read, Write};

/// The version a runner announces in its ready frame.
pub const RUNNER_PROTOCOL_VERSION: u32 = 2;

/// `select` meaning "every element of the batch".
pub const ALL: u32 = u32::MAX;

/// The engine's batch input framing: `QBAT`, `u32 count`, then per element
/// `u32 length, bytes`.
pub const BATCH_MAGIC: &[u8; 4] = b"QBAT";

/// Frames are capped so a corrupt length cannot make the runtime allocate wildly.
pub const MAX_FRAME: usize = 1 << 31;

pub const TAG_READY: u8 = b'R';
pub const TAG_FUNCTION: u8 = b'F';
pub const TAG_CALL: u8 = b'C';
pub const TAG_DONE: u8 = b'D';
pub const TAG_ENVIRONMENT: u8 = b'E';

/// A frame the runtime receives from a runner.
#[derive(Debug, PartialEq)]
pub enum FromRunner {
    Ready {
        version: u32,
        pid: u32,
    },
    Done {
        call_id: u32,
        answer: Answer,
        peak_rss: u64,
    },
}

/// What a runner answers for one call.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// A single call's result.
    Ok(Vec<u8>),
    /// A single call's error report (JSON).
    Err(Vec<u8>),
    /// Every element of the batch succeeded: the runner's encoding of all
    /// their values at once.
    Shared(Vec<u8>),
    /// Each element's own outcome, in order: `(ok, result or error report)`.
    Each(Vec<(bool, Vec<u8>)>),
}

const KIND_OK: u8 = 0;
const KIND_ERR: u8 = 1;
const KIND_SHARED: u8 = 2;
const KIND_EACH: u8 = 3;

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
        count: u32,
        select: u32,
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

pub fn encode_call(
    out: &mut Vec<u8>,
    function_id: u32,
    call_id: u32,
    count: u32,
    select: u32,
    input: &[u8],
) {
    encode_call_head(out, function_id, call_id, count, select, input.len());
    out.extend_from_slice(input);
}

/// A call frame without its input, which the caller writes right after
/// (a large input is written from where it is, not copied into the frame).
pub fn encode_call_head(
    out: &mut Vec<u8>,
    function_id: u32,
    call_id: u32,
    count: u32,
    select: u32,
    input_len: usize,
) {
    header(out, TAG_CALL, 16 + input_len);
    for n in [function_id, call_id, count, select] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// The engine's encoding of a batch's inputs (see [`BATCH_MAGIC`]).
pub fn encode_batch_input<'a>(inputs: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::from(&BATCH_MAGIC[..]);
    out.extend_from_slice(&(inputs.len() as u32).to_le_bytes());
    for input in inputs {
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        out.extend_from_slice(input);
    }
    out
}

/// The elements' inputs of a batch in the engine's framing.
pub fn decode_batch_input(input: &[u8]) -> io::Result<Vec<&[u8]>> {
    if input.get(..4) != Some(&BATCH_MAGIC[..]) {
        return Err(invalid("a batch input does not start with QBAT".into()));
    }
    let count = u32_at(input, 4)? as usize;
    let mut at = 8;
    let mut out = Vec::with_capacity(count.min(input.len()));
    for _ in 0..count {
        let len = u32_at(input, at)? as usize;
        at += 4;
        out.push(
            input
                .get(at..at + len)
                .ok_or_else(|| invalid("a batch input is cut short".into()))?,
        );
        at += len;
    }
    Ok(out)
}

/// The environment frame of an adopted runner: `key=value\0` per variable.
pub fn encode_environment<'a>(
    out: &mut Vec<u8>,
    vars: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let mut body = Vec::new();
    for (key, value) in vars {
        body.extend_from_slice(key);
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(0);
    }
    header(out, TAG_ENVIRONMENT, body.len());
    out.extend_from_slice(&body);
}

pub fn encode_ready(out: &mut Vec<u8>, pid: u32) {
    header(out, TAG_READY, 8);
    out.extend_from_slice(&RUNNER_PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&pid.to_le_bytes());
}

pub fn encode_done(out: &mut Vec<u8>, call_id: u32, answer: &Answer, peak_rss: u64) {
    let (kind, len) = match answer {
        Answer::Ok(p) => (KIND_OK, p.len()),
        Answer::Err(p) => (KIND_ERR, p.len()),
        Answer::Shared(p) => (KIND_SHARED, p.len()),
        Answer::Each(entries) => (
            KIND_EACH,
            4 + entries.iter().map(|(_, p)| 5 + p.len()).sum::<usize>(),
        ),
    };
    header(out, TAG_DONE, 13 + len);
    out.extend_from_slice(&call_id.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&peak_rss.to_le_bytes());
    match answer {
        Answer::Ok(p) | Answer::Err(p) | Answer::Shared(p) => out.extend_from_slice(p),
        Answer::Each(entries) => {
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for (ok, p) in entries {
                out.push(if *ok { 0 } else { 1 });
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
                out.extend_from_slice(p);
            }
        }
    }
}

fn decode_each(body: &[u8]) -> io::Result<Vec<(bool, Vec<u8>)>> {
    let count = u32_at(body, 0)? as usize;
    let mut at = 4;
    let mut entries = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let ok = *body
            .get(at)
            .ok_or_else(|| invalid("an answer is cut short".into()))?
            == 0;
        let len = u32_at(body, at + 1)? as usize;
        at += 5;
        let bytes = body
            .get(at..at + len)
            .ok_or_else(|| invalid("an answer is cut short".into()))?;
        entries.push((ok, bytes.to_vec()));
        at += len;
    }
    Ok(entries)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads one frame: `Ok(None)` on a clean end of stream.
fn read_frame(reader: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let Some((tag, len)) = read_frame_head(reader)? else {
        return Ok(None);
    };
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Some((tag, body)))
}

/// A frame's tag and the length of its body, which is still to be read.
fn read_frame_head(reader: &mut impl Read) -> io::Result<Option<(u8, usize)>> {
    let mut head = [0u8; 5];
    match reader.read_exact(&mut head[..4]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(format!("frame length {len} out of range")));
    }
    reader.read_exact(&mut head[4..])?;
    Ok(Some((head[4], len - 1)))
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
    let Some((tag, len)) = read_frame_head(reader)? else {
        return Ok(None);
    };
    match tag {
        TAG_READY => {
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
            Ok(Some(FromRunner::Ready {
                version: u32_at(&body, 0)?,
                pid: u32_at(&body, 4)?,
            }))
        }
        TAG_DONE => {
            // The head apart, so that a large payload is read into its own
            // buffer once (not moved down by 13 bytes after).
            let mut head = [0u8; 13];
            if len < head.len() {
                return Err(invalid("frame too short".into()));
            }
            reader.read_exact(&mut head)?;
            let call_id = u32_at(&head, 0)?;
            let kind = head[4];
            let peak_rss = u64_at(&head, 5)?;
            let mut payload = vec![0u8; len - head.len()];
            reader.read_exact(&mut payload)?;
            let answer = match kind {
                KIND_OK => Answer::Ok(payload),
                KIND_ERR => Answer::Err(payload),
                KIND_SHARED => Answer::Shared(payload),
                KIND_EACH => Answer::Each(decode_each(&payload)?),
                other => return Err(invalid(format!("unknown answer kind {other}"))),
            };
            Ok(Some(FromRunner::Done {
                call_id,
                answer,
                peak_rss,
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
            let count = u32_at(&body, 8)?;
            let select = u32_at(&body, 12)?;
            let mut input = body;
            input.drain(..16);
            Ok(Some(ToRunner::Call {
                function_id,
                call_id,
                count,
                select,
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
    fn the_environment_frame_is_key_value_pairs_each_ended_by_nul() {
        let mut out = Vec::new();
        encode_environment(&mut out, [(&b"A"[..], &b"1"[..]), (b"QUELEA_X", b"x=y")]);
        let body = b"A=1\0QUELEA_X=x=y\0";
        assert_eq!(&out[..4], &((body.len() + 1) as u32).to_le_bytes());
        assert_eq!(out[4], TAG_ENVIRONMENT);
        assert_eq!(&out[5..], body);
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_function(&mut buf, 3, b"add");
        encode_call(&mut buf, 3, 42, 1, ALL, b"[1,2]");
        encode_call(&mut buf, 3, 40, 4, 2, b"batch");
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
                count: 1,
                select: ALL,
                input: b"[1,2]".to_vec()
            })
        );
        assert_eq!(
            read_to_runner(&mut r).unwrap(),
            Some(ToRunner::Call {
                function_id: 3,
                call_id: 40,
                count: 4,
                select: 2,
                input: b"batch".to_vec()
            })
        );
        assert_eq!(read_to_runner(&mut r).unwrap(), None);

        let mut buf = Vec::new();
        encode_ready(&mut buf, 77);
        encode_done(&mut buf, 42, &Answer::Err(b"{}".to_vec()), 1 << 20);
        let each = Answer::Each(vec![
            (true, b"1".to_vec()),
            (false, b"{}".to_vec()),
            (true, vec![]),
        ]);
        encode_done(&mut buf, 7, &each, 9);
        encode_done(&mut buf, 8, &Answer::Shared(b"all".to_vec()), 9);
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
                answer: Answer::Err(b"{}".to_vec()),
                peak_rss: 1 << 20,
            })
        );
        assert_eq!(
            read_from_runner(&mut r).unwrap(),
            Some(FromRunner::Done {
                call_id: 7,
                answer: each,
                peak_rss: 9,
            })
        );
        assert_eq!(
            read_from_runner(&mut r).unwrap(),
            Some(FromRunner::Done {
                call_id: 8,
                answer: Answer::Shared(b"all".to_vec()),
                peak_rss: 9,
            })
        );
    }

    #[test]
    fn batch_inputs_round_trip_and_garbage_is_an_error() {
        let inputs: [&[u8]; 3] = [b"a", b"", b"ccc"];
        let encoded = encode_batch_input(inputs.iter().copied());
        assert_eq!(decode_batch_input(&encoded).unwrap(), inputs.to_vec());
        assert!(decode_batch_input(b"QBAT").is_err());
        assert!(decode_batch_input(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode_batch_input(b"[1]").is_err());
        // A huge count with no bytes behind it fails without a huge allocation.
        assert!(decode_batch_input(b"QBAT\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut r = &[0u8, 0, 0, 0][..];
        assert!(read_from_runner(&mut r).is_err());
        let mut r = &[2u8, 0, 0, 0, b'Z', 0][..];
        assert!(read_from_runner(&mut r).is_err());
        let mut r = &[9u8, 0, 0, 0, b'D', 0][..];
        assert!(read_from_runner(&mut r).is_err());
        // An unknown answer kind, and an "each" answer cut short.
        let mut buf = Vec::new();
        encode_done(&mut buf, 1, &Answer::Ok(vec![]), 0);
        buf[9] = 9;
        assert!(read_from_runner(&mut &buf[..]).is_err());
        let mut buf = Vec::new();
        encode_done(&mut buf, 1, &Answer::Each(vec![(true, b"xyz".to_vec())]), 0);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) - 2;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf.truncate(buf.len() - 2);
        assert!(read_from_runner(&mut &buf[..]).is_err());
    }
}
