//! Following the server's answer to one command.
//!
//! The classic protocol is strictly request → response, and nothing in a response
//! says "this is the last packet" by itself: whether an OK ends the answer depends on
//! the command, on the `MORE_RESULTS_EXISTS` status flag, and on where in a result set
//! it comes. [`ResponseTracker`] is fed each packet of the answer in order and says
//! when it is complete, so the relay knows when the upstream is idle (and the gateway
//! may speak), what the answer said (rows, affected rows, the error) for the audit
//! trail, the prepared statement id, the transaction status, and the session state the
//! server reported (the tripwire's input).
//!
//! The gateway never negotiates `CLIENT_DEPRECATE_EOF`, optional result-set metadata
//! or MariaDB's metadata cache with either side, so result sets always end with an EOF
//! packet (`0xFE`, shorter than 9 bytes) — a text row that begins with `0xFE` is at
//! least 9 bytes long, and a binary row begins with `0x00`.

use crate::{lenenc_int, ProtocolError};

/// Transaction open.
pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
/// Another result follows this one (multi-statements).
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// A cursor was opened (`COM_STMT_EXECUTE` with a cursor type).
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
/// The OK packet carries session-state changes.
pub const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;

/// What answer a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `COM_QUERY`, `COM_STMT_EXECUTE`: OK, ERR, or result sets (possibly several).
    Results,
    /// `COM_STMT_PREPARE`: a prepare-OK with parameter and column definitions, or ERR.
    Prepare,
    /// `COM_FIELD_LIST`: column definitions ending with EOF, or ERR.
    FieldList,
    /// `COM_PING`, `COM_INIT_DB`, `COM_STMT_RESET`, `COM_SET_OPTION`,
    /// `COM_RESET_CONNECTION`: one OK, EOF or ERR packet.
    One,
    /// `COM_STATISTICS`: one string packet.
    Text,
}

/// One step of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More packets of this answer follow.
    More,
    /// The answer is complete.
    Done,
}

/// A server error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

/// A decoded OK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ok {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: Vec<u8>,
    /// System variables the server reported changed (session-state tracking).
    pub variables: Vec<(String, String)>,
    /// Session-state tracking was on and some state changed (any kind).
    pub state_changed: bool,
}

impl Ok {
    /// Decodes an OK packet (header `0x00`). `session_track`: whether
    /// `CLIENT_SESSION_TRACK` was negotiated with the server that sent it.
    pub fn decode(payload: &[u8], session_track: bool) -> Result<Ok, ProtocolError> {
        let bad = |problem| ProtocolError::Malformed {
            what: "OK packet",
            problem,
        };
        let mut pos = 1;
        let (affected_rows, n) =
            lenenc_int(payload.get(pos..).unwrap_or(&[])).ok_or(bad("affected rows"))?;
        pos += n;
        let (last_insert_id, n) =
            lenenc_int(payload.get(pos..).unwrap_or(&[])).ok_or(bad("insert id"))?;
        pos += n;
        let flags = payload.get(pos..pos + 4).ok_or(bad("status"))?;
        let status = u16::from_le_bytes([flags[0], flags[1]]);
        let warnings = u16::from_le_bytes([flags[2], flags[3]]);
        pos += 4;
        let rest = payload.get(pos..).unwrap_or(&[]);
        let mut ok = Ok {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info: Vec::new(),
            variables: Vec::new(),
            state_changed: false,
        };
        if !session_track {
            ok.info = rest.to_vec();
            return Result::Ok(ok);
        }
        if rest.is_empty() {
            return Result::Ok(ok);
        }
        let (info, n) = lenenc_str(rest).ok_or(bad("info"))?;
        ok.info = info.to_vec();
        let rest = &rest[n..];
        if status & SERVER_SESSION_STATE_CHANGED != 0 && !rest.is_empty() {
            ok.state_changed = true;
            let (mut state, _) = lenenc_str(rest).ok_or(bad("session state"))?;
            while !state.is_empty() {
                let kind = state[0];
                let (data, n) = lenenc_str(&state[1..]).ok_or(bad("session state entry"))?;
                state = &state[1 + n..];
                // SESSION_TRACK_SYSTEM_VARIABLES: name and value, each length-encoded.
                if kind == 0 {
                    let (name, n) = lenenc_str(data).ok_or(bad("variable name"))?;
                    let (value, _) = lenenc_str(&data[n..]).ok_or(bad("variable value"))?;
                    ok.variables.push((
                        String::from_utf8_lossy(name).to_ascii_lowercase(),
                        String::from_utf8_lossy(value).into_owned(),
                    ));
                }
            }
        }
        Result::Ok(ok)
    }

    /// Encodes the packet for a client that did not negotiate session-state
    /// tracking: the tracking data is dropped, the info string kept.
    pub fn encode_untracked(&self) -> Vec<u8> {
        let mut out = vec![0u8];
        crate::put_lenenc_int(&mut out, self.affected_rows);
        crate::put_lenenc_int(&mut out, self.last_insert_id);
        let status = self.status & !SERVER_SESSION_STATE_CHANGED;
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out.extend_from_slice(&self.info);
        out
    }
}

fn lenenc_str(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = lenenc_int(buf)?;
    let len = usize::try_from(len).ok()?;
    let end = n.checked_add(len)?;
    Some((buf.get(n..end)?, end))
}

/// Decodes an ERR packet (header `0xFF`).
pub fn decode_err(payload: &[u8]) -> ServerError {
    let code = payload
        .get(1..3)
        .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let rest = payload.get(3..).unwrap_or(&[]);
    let (sqlstate, message) = match rest.split_first() {
        Some((b'#', tail)) if tail.len() >= 5 => {
            (String::from_utf8_lossy(&tail[..5]).into_owned(), &tail[5..])
        }
        _ => ("HY000".to_owned(), rest),
    };
    ServerError {
        code,
        sqlstate,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}

fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

fn eof_status(payload: &[u8]) -> u16 {
    payload
        .get(3..5)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

impl ResponseTracker {
    fn take_eof(&mut self, payload: &[u8]) -> u16 {
        let status = eof_status(payload);
        if status & SERVER_SESSION_STATE_CHANGED != 0 {
            self.eof_state_changed = true;
        }
        self.status = Some(status);
        status
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    First,
    Columns { left: u64 },
    ColumnsEof,
    Rows,
    PrepareParams { left: u64, columns: u64 },
    PrepareParamsEof { columns: u64 },
    PrepareColumns { left: u64 },
    PrepareColumnsEof,
    FieldList,
    Done,
}

/// Follows one command's answer; see the module docs.
#[derive(Debug, Clone)]
pub struct ResponseTracker {
    expect: Expect,
    session_track: bool,
    state: State,
    /// Rows returned, over all result sets.
    pub rows: u64,
    /// Rows affected (OK packets).
    pub affected_rows: u64,
    /// The error that ended the answer, if any.
    pub error: Option<ServerError>,
    /// The status flags of the last OK/EOF packet.
    pub status: Option<u16>,
    /// The id of a statement prepared by this answer, and its parameter count.
    pub stmt_id: Option<u32>,
    pub stmt_params: u16,
    /// System variables reported changed, in order.
    pub variables: Vec<(String, String)>,
    /// Packets of this answer so far.
    pub packets: u64,
    /// Statements whose result has ended (an OK, or a result set's last EOF); a
    /// multi-statement text gets one per statement, until an error ends the answer.
    pub completed: u64,
    /// An EOF packet said the session state changed. EOF packets carry no details
    /// (only OK packets do), so the session layer must read the state itself.
    pub eof_state_changed: bool,
}

impl ResponseTracker {
    /// `session_track`: whether the upstream was asked for session-state tracking.
    pub fn new(expect: Expect, session_track: bool) -> Self {
        ResponseTracker {
            expect,
            session_track,
            state: State::First,
            rows: 0,
            affected_rows: 0,
            error: None,
            status: None,
            stmt_id: None,
            stmt_params: 0,
            variables: Vec::new(),
            packets: 0,
            completed: 0,
            eof_state_changed: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next packet of the answer. Returns the OK packet it decoded, if it
    /// was one, so the relay can re-encode it.
    pub fn feed(&mut self, payload: &[u8]) -> Result<(Step, Option<Ok>), ProtocolError> {
        self.packets += 1;
        let first = *payload.first().ok_or(ProtocolError::Malformed {
            what: "server packet",
            problem: "empty",
        })?;
        let mut ok_packet = None;
        let next = match (self.state, self.expect) {
            (State::Done, _) => {
                return Err(ProtocolError::Unexpected {
                    what: "packet after the end of an answer",
                })
            }
            (_, _)
                if first == 0xff
                    && !matches!(
                        self.state,
                        State::Columns { .. }
                            | State::PrepareParams { .. }
                            | State::PrepareColumns { .. }
                    ) =>
            {
                self.error = Some(decode_err(payload));
                State::Done
            }
            (State::First, Expect::Text) => State::Done,
            (State::First, Expect::One) => {
                if first == 0x00 {
                    let ok = Ok::decode(payload, self.session_track)?;
                    self.take_ok(&ok);
                    ok_packet = Some(ok);
                } else if is_eof(payload) {
                    self.take_eof(payload);
                } else {
                    return Err(ProtocolError::Unexpected {
                        what: "answer to a simple command",
                    });
                }
                State::Done
            }
            (State::First, Expect::Results) => match first {
                0x00 => {
                    let ok = Ok::decode(payload, self.session_track)?;
                    self.take_ok(&ok);
                    self.completed += 1;
                    let more = ok.status & SERVER_MORE_RESULTS_EXISTS != 0;
                    ok_packet = Some(ok);
                    if more {
                        State::First
                    } else {
                        State::Done
                    }
                }
                0xfb => {
                    return Err(ProtocolError::Unexpected {
                        what: "LOCAL INFILE request",
                    })
                }
                _ => {
                    let (n, _) = lenenc_int(payload).ok_or(ProtocolError::Malformed {
                        what: "result set header",
                        problem: "bad column count",
                    })?;
                    if n == 0 {
                        return Err(ProtocolError::Malformed {
                            what: "result set header",
                            problem: "zero columns",
                        });
                    }
                    State::Columns { left: n }
                }
            },
            (State::Columns { left }, _) => {
                if left > 1 {
                    State::Columns { left: left - 1 }
                } else {
                    State::ColumnsEof
                }
            }
            (State::ColumnsEof, _) => {
                if !is_eof(payload) {
                    return Err(ProtocolError::Unexpected {
                        what: "packet after column definitions",
                    });
                }
                let status = self.take_eof(payload);
                if status & SERVER_STATUS_CURSOR_EXISTS != 0 {
                    State::Done
                } else {
                    State::Rows
                }
            }
            (State::Rows, _) => {
                if is_eof(payload) {
                    let status = self.take_eof(payload);
                    self.completed += 1;
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        State::First
                    } else {
                        State::Done
                    }
                } else {
                    self.rows += 1;
                    State::Rows
                }
            }
            (State::First, Expect::Prepare) => {
                if first != 0x00 || payload.len() < 12 {
                    return Err(ProtocolError::Unexpected {
                        what: "answer to COM_STMT_PREPARE",
                    });
                }
                self.stmt_id = Some(u32::from_le_bytes([
                    payload[1], payload[2], payload[3], payload[4],
                ]));
                let columns = u64::from(u16::from_le_bytes([payload[5], payload[6]]));
                self.stmt_params = u16::from_le_bytes([payload[7], payload[8]]);
                let params = u64::from(self.stmt_params);
                if params > 0 {
                    State::PrepareParams {
                        left: params,
                        columns,
                    }
                } else if columns > 0 {
                    State::PrepareColumns { left: columns }
                } else {
                    State::Done
                }
            }
            (State::PrepareParams { left, columns }, _) => {
                if left > 1 {
                    State::PrepareParams {
                        left: left - 1,
                        columns,
                    }
                } else {
                    State::PrepareParamsEof { columns }
                }
            }
            (State::PrepareParamsEof { columns }, _) => {
                if !is_eof(payload) {
                    return Err(ProtocolError::Unexpected {
                        what: "packet after parameter definitions",
                    });
                }
                if columns > 0 {
                    State::PrepareColumns { left: columns }
                } else {
                    State::Done
                }
            }
            (State::PrepareColumns { left }, _) => {
                if left > 1 {
                    State::PrepareColumns { left: left - 1 }
                } else {
                    State::PrepareColumnsEof
                }
            }
            (State::PrepareColumnsEof, _) => {
                if !is_eof(payload) {
                    return Err(ProtocolError::Unexpected {
                        what: "packet after prepared column definitions",
                    });
                }
                State::Done
            }
            (State::First | State::FieldList, Expect::FieldList) => {
                if is_eof(payload) {
                    self.take_eof(payload);
                    State::Done
                } else {
                    State::FieldList
                }
            }
            (State::FieldList, _) => {
                return Err(ProtocolError::Unexpected {
                    what: "field list packet",
                })
            }
        };
        self.state = next;
        let step = if next == State::Done {
            Step::Done
        } else {
            Step::More
        };
        Result::Ok((step, ok_packet))
    }

    fn take_ok(&mut self, ok: &Ok) {
        self.affected_rows += ok.affected_rows;
        self.status = Some(ok.status);
        self.variables.extend(ok.variables.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16) -> Vec<u8> {
        let mut p = vec![0, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    fn eof(status: u16) -> Vec<u8> {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }

    #[test]
    fn a_result_set_ends_at_its_eof() {
        let mut t = ResponseTracker::new(Expect::Results, false);
        assert_eq!(t.feed(&[2]).unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03defcol1").unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03defcol2").unwrap().0, Step::More);
        assert_eq!(t.feed(&eof(2)).unwrap().0, Step::More);
        // A text row that starts with 0xFE is a long value, not an EOF.
        let mut long_row = vec![0xfe];
        long_row.extend_from_slice(&[0; 8]);
        assert_eq!(t.feed(&long_row).unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x01a\x01b").unwrap().0, Step::More);
        assert_eq!(t.feed(&eof(2)).unwrap().0, Step::Done);
        assert_eq!(t.rows, 2);
        assert!(t.feed(&ok(0)).is_err());
    }

    #[test]
    fn multi_results_follow_the_more_results_flag() {
        let mut t = ResponseTracker::new(Expect::Results, false);
        assert_eq!(
            t.feed(&ok(SERVER_MORE_RESULTS_EXISTS)).unwrap().0,
            Step::More
        );
        assert_eq!(t.feed(&[1]).unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03def").unwrap().0, Step::More);
        assert_eq!(t.feed(&eof(0)).unwrap().0, Step::More);
        assert_eq!(
            t.feed(&eof(SERVER_MORE_RESULTS_EXISTS)).unwrap().0,
            Step::More
        );
        let mut err = vec![0xff, 0x7a, 0x04, b'#'];
        err.extend_from_slice(b"42S02Table 'x' doesn't exist");
        assert_eq!(t.feed(&err).unwrap().0, Step::Done);
        assert_eq!(t.error.as_ref().map(|e| e.code), Some(1146));
        assert_eq!(t.error.as_ref().map(|e| e.sqlstate.as_str()), Some("42S02"));
    }

    #[test]
    fn prepare_answers_carry_the_statement_id() {
        let mut t = ResponseTracker::new(Expect::Prepare, false);
        let head = [0u8, 9, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        assert_eq!(t.feed(&head).unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03defp1").unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03defp2").unwrap().0, Step::More);
        assert_eq!(t.feed(&eof(0)).unwrap().0, Step::More);
        assert_eq!(t.feed(b"\x03defc1").unwrap().0, Step::More);
        assert_eq!(t.feed(&eof(0)).unwrap().0, Step::Done);
        assert_eq!(t.stmt_id, Some(9));
    }

    #[test]
    fn local_infile_requests_are_refused() {
        let mut t = ResponseTracker::new(Expect::Results, false);
        assert!(t.feed(b"\xfb/etc/passwd").is_err());
    }

    #[test]
    fn session_state_is_decoded_and_can_be_stripped() {
        // OK with tracking: info "", state: one system variable sql_mode=ANSI_QUOTES.
        let mut var = Vec::new();
        crate::put_lenenc_int(&mut var, 8);
        var.extend_from_slice(b"sql_mode");
        crate::put_lenenc_int(&mut var, 11);
        var.extend_from_slice(b"ANSI_QUOTES");
        let mut entry = vec![0u8];
        crate::put_lenenc_int(&mut entry, var.len() as u64);
        entry.extend_from_slice(&var);
        let mut p = ok(SERVER_SESSION_STATE_CHANGED | SERVER_STATUS_AUTOCOMMIT);
        p.push(0);
        crate::put_lenenc_int(&mut p, entry.len() as u64);
        p.extend_from_slice(&entry);
        let decoded = Ok::decode(&p, true).unwrap();
        assert_eq!(
            decoded.variables,
            vec![("sql_mode".into(), "ANSI_QUOTES".into())]
        );
        let plain = decoded.encode_untracked();
        let again = Ok::decode(&plain, false).unwrap();
        assert_eq!(again.status, SERVER_STATUS_AUTOCOMMIT);
        assert!(again.info.is_empty());
    }
}
