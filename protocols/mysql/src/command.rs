//! Client commands: one type per command the gateway decides on.
//!
//! A command is the payload of the first packet of a client request (sequence id 0):
//! a command byte and its arguments. Text arguments (statements, database names) must
//! be valid UTF-8 — the gateway pins `utf8mb4` on both sides, and the text it
//! classifies must be the text the server runs, so bytes that are not UTF-8 are an
//! error, never converted lossily.

use crate::ProtocolError;

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PING: u8 = 0x0e;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1a;
pub const COM_SET_OPTION: u8 = 0x1b;
pub const COM_STMT_FETCH: u8 = 0x1c;
pub const COM_RESET_CONNECTION: u8 = 0x1f;

/// A decoded client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand<'a> {
    Quit,
    /// `COM_INIT_DB`: change the default database.
    InitDb(&'a str),
    /// `COM_QUERY`: one or more statements as text.
    Query(&'a str),
    /// `COM_FIELD_LIST`: the columns of a table (deprecated, still sent by old clients).
    FieldList {
        table: &'a str,
    },
    Statistics,
    Ping,
    /// `COM_STMT_PREPARE`: a statement to prepare.
    Prepare(&'a str),
    /// `COM_STMT_EXECUTE`: run a prepared statement. `flags` is the cursor type.
    Execute {
        stmt_id: u32,
        flags: u8,
    },
    SendLongData {
        stmt_id: u32,
    },
    Close {
        stmt_id: u32,
    },
    Reset {
        stmt_id: u32,
    },
    Fetch {
        stmt_id: u32,
    },
    /// `COM_SET_OPTION`: 0 turns multi-statements on, 1 off.
    SetOption(u16),
    /// `COM_RESET_CONNECTION`: reset session state without a new login.
    ResetConnection,
    /// Anything else (`COM_CHANGE_USER`, `COM_BINLOG_DUMP`, `COM_PROCESS_KILL`,
    /// `COM_SHUTDOWN`, ...): never forwarded.
    Other {
        code: u8,
        name: &'static str,
    },
}

impl ClientCommand<'_> {
    /// The command's name, for messages and audit.
    pub fn name(&self) -> &'static str {
        match self {
            ClientCommand::Quit => "COM_QUIT",
            ClientCommand::InitDb(_) => "COM_INIT_DB",
            ClientCommand::Query(_) => "COM_QUERY",
            ClientCommand::FieldList { .. } => "COM_FIELD_LIST",
            ClientCommand::Statistics => "COM_STATISTICS",
            ClientCommand::Ping => "COM_PING",
            ClientCommand::Prepare(_) => "COM_STMT_PREPARE",
            ClientCommand::Execute { .. } => "COM_STMT_EXECUTE",
            ClientCommand::SendLongData { .. } => "COM_STMT_SEND_LONG_DATA",
            ClientCommand::Close { .. } => "COM_STMT_CLOSE",
            ClientCommand::Reset { .. } => "COM_STMT_RESET",
            ClientCommand::Fetch { .. } => "COM_STMT_FETCH",
            ClientCommand::SetOption(_) => "COM_SET_OPTION",
            ClientCommand::ResetConnection => "COM_RESET_CONNECTION",
            ClientCommand::Other { name, .. } => name,
        }
    }
}

fn text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, ProtocolError> {
    std::str::from_utf8(bytes).map_err(|_| ProtocolError::NotUtf8 { what })
}

fn stmt_id(rest: &[u8], what: &'static str) -> Result<u32, ProtocolError> {
    match rest.get(..4) {
        Some(id) => Ok(u32::from_le_bytes([id[0], id[1], id[2], id[3]])),
        None => Err(ProtocolError::Malformed {
            what,
            problem: "no statement id",
        }),
    }
}

/// Decodes a command packet's payload.
pub fn decode(payload: &[u8]) -> Result<ClientCommand<'_>, ProtocolError> {
    let Some((&code, rest)) = payload.split_first() else {
        return Err(ProtocolError::Malformed {
            what: "command",
            problem: "empty packet",
        });
    };
    Ok(match code {
        COM_QUIT => ClientCommand::Quit,
        COM_INIT_DB => ClientCommand::InitDb(text(rest, "COM_INIT_DB database name")?),
        COM_QUERY => ClientCommand::Query(text(rest, "COM_QUERY statement text")?),
        COM_FIELD_LIST => {
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            ClientCommand::FieldList {
                table: text(&rest[..end], "COM_FIELD_LIST table name")?,
            }
        }
        COM_STATISTICS => ClientCommand::Statistics,
        COM_PING => ClientCommand::Ping,
        COM_STMT_PREPARE => ClientCommand::Prepare(text(rest, "COM_STMT_PREPARE statement text")?),
        COM_STMT_EXECUTE => ClientCommand::Execute {
            stmt_id: stmt_id(rest, "COM_STMT_EXECUTE")?,
            flags: rest.get(4).copied().ok_or(ProtocolError::Malformed {
                what: "COM_STMT_EXECUTE",
                problem: "no flags",
            })?,
        },
        COM_STMT_SEND_LONG_DATA => ClientCommand::SendLongData {
            stmt_id: stmt_id(rest, "COM_STMT_SEND_LONG_DATA")?,
        },
        COM_STMT_CLOSE => ClientCommand::Close {
            stmt_id: stmt_id(rest, "COM_STMT_CLOSE")?,
        },
        COM_STMT_RESET => ClientCommand::Reset {
            stmt_id: stmt_id(rest, "COM_STMT_RESET")?,
        },
        COM_STMT_FETCH => ClientCommand::Fetch {
            stmt_id: stmt_id(rest, "COM_STMT_FETCH")?,
        },
        COM_SET_OPTION => match rest.get(..2) {
            Some(v) => ClientCommand::SetOption(u16::from_le_bytes([v[0], v[1]])),
            None => {
                return Err(ProtocolError::Malformed {
                    what: "COM_SET_OPTION",
                    problem: "no option",
                })
            }
        },
        COM_RESET_CONNECTION => ClientCommand::ResetConnection,
        other => ClientCommand::Other {
            code: other,
            name: match other {
                0x00 => "COM_SLEEP",
                0x05 => "COM_CREATE_DB",
                0x06 => "COM_DROP_DB",
                0x07 => "COM_REFRESH",
                0x08 => "COM_SHUTDOWN",
                0x0a => "COM_PROCESS_INFO",
                0x0b => "COM_CONNECT",
                0x0c => "COM_PROCESS_KILL",
                0x0d => "COM_DEBUG",
                COM_CHANGE_USER => "COM_CHANGE_USER",
                0x12 => "COM_BINLOG_DUMP",
                0x13 => "COM_TABLE_DUMP",
                0x15 => "COM_REGISTER_SLAVE",
                0x1d => "COM_DAEMON",
                0x1e => "COM_BINLOG_DUMP_GTID",
                0xfa => "COM_STMT_BULK_EXECUTE",
                _ => "an unknown command",
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_strictly() {
        assert_eq!(
            decode(b"\x03SELECT 1"),
            Ok(ClientCommand::Query("SELECT 1"))
        );
        assert!(matches!(
            decode(b"\x03SELECT '\xff'"),
            Err(ProtocolError::NotUtf8 { .. })
        ));
        assert_eq!(
            decode(&[COM_STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0]),
            Ok(ClientCommand::Execute {
                stmt_id: 5,
                flags: 0
            })
        );
        assert!(decode(&[COM_STMT_EXECUTE, 5, 0]).is_err());
        assert!(decode(&[]).is_err());
        assert_eq!(
            decode(&[0x12]),
            Ok(ClientCommand::Other {
                code: 0x12,
                name: "COM_BINLOG_DUMP"
            })
        );
    }
}
