//! SQLSTATE codes the gateway sends, by name (PostgreSQL's Appendix A).

pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const CONNECTION_FAILURE: &str = "08006";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const SYNTAX_ERROR: &str = "42601";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const INSUFFICIENT_RESOURCES: &str = "53000";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const SYSTEM_IO_ERROR: &str = "58030";
pub const INTERNAL_ERROR: &str = "XX000";
