//! The gateway's login to an upstream server, as a sans-IO state machine.
//!
//! [`startup_packet`] builds the StartupMessage (with the session settings sqlgate
//! pins in `options`). [`UpstreamLogin::on_auth`] takes each Authentication request
//! the server sends and returns the bytes to answer with: nothing for trust, the
//! password for cleartext, the md5 digest, or the SCRAM-SHA-256 exchange (via
//! `postgres-protocol`, the SCRAM client tokio-postgres uses). The server's final
//! SCRAM message is verified, so a server that does not know the password cannot
//! pretend to.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

/// Why an upstream login could not proceed. Messages never include the password.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("upstream asks for a password but the connection has no credential configured")]
    NoPassword,
    #[error("upstream asks for an authentication method sqlgate does not support ({0})")]
    Unsupported(&'static str),
    #[error("upstream offers SASL mechanisms sqlgate does not support (needs SCRAM-SHA-256)")]
    NoScram,
    #[error("upstream SCRAM exchange failed: {0}")]
    Scram(String),
    #[error("unexpected message during upstream login")]
    Unexpected,
    #[error("upstream asks for {0} authentication, which this connection does not allow (upstream_auth)")]
    MethodNotAllowed(&'static str),
    #[error("could not encode a login message: {0}")]
    Encode(String),
}

/// Builds the StartupMessage for the upstream session.
pub fn startup_packet(params: &[(&str, &str)], out: &mut BytesMut) -> Result<(), LoginError> {
    frontend::startup_message(params.iter().copied(), out)
        .map_err(|e| LoginError::Encode(e.to_string()))
}

/// The login to one upstream server, between the StartupMessage and AuthenticationOk.
pub struct UpstreamLogin {
    user: String,
    password: Option<Vec<u8>>,
    /// Methods the server may ask for ("trust", "password", "md5", "scram-sha-256"),
    /// like libpq's `require_auth`: a spoofed server asking for a cleartext password
    /// gets nothing.
    allowed: Vec<String>,
    scram: Option<ScramSha256>,
    /// Which method the server asked for, for logs and audit ("trust", "md5", ...).
    method: &'static str,
}

/// What to do after an Authentication message.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// Send these bytes and keep reading.
    Send(BytesMut),
    /// Nothing to send; keep reading (SCRAM final verified).
    Continue,
    /// AuthenticationOk: the login is done.
    Done,
}

impl UpstreamLogin {
    pub fn new(user: &str, password: Option<&[u8]>, allowed: &[String]) -> Self {
        UpstreamLogin {
            user: user.to_owned(),
            password: password.map(<[u8]>::to_vec),
            allowed: allowed.to_vec(),
            scram: None,
            method: "trust",
        }
    }

    fn permit(&mut self, method: &'static str) -> Result<(), LoginError> {
        if !self.allowed.iter().any(|m| m == method) {
            return Err(LoginError::MethodNotAllowed(method));
        }
        self.method = method;
        Ok(())
    }

    /// The authentication method the server asked for so far.
    pub fn method(&self) -> &'static str {
        self.method
    }

    fn password(&self) -> Result<&[u8], LoginError> {
        self.password.as_deref().ok_or(LoginError::NoPassword)
    }

    /// Handles one authentication-phase message from the server.
    pub fn on_auth(&mut self, message: &Message) -> Result<LoginStep, LoginError> {
        let mut out = BytesMut::new();
        match message {
            Message::AuthenticationOk => {
                if self.scram.is_none() && self.method == "trust" {
                    self.permit("trust")?;
                }
                return Ok(LoginStep::Done);
            }
            Message::AuthenticationCleartextPassword => {
                self.permit("password")?;
                frontend::password_message(self.password()?, &mut out)
                    .map_err(|e| LoginError::Encode(e.to_string()))?;
            }
            Message::AuthenticationMd5Password(body) => {
                self.permit("md5")?;
                let digest = md5_hash(self.user.as_bytes(), self.password()?, body.salt());
                frontend::password_message(digest.as_bytes(), &mut out)
                    .map_err(|e| LoginError::Encode(e.to_string()))?;
            }
            Message::AuthenticationSasl(body) => {
                self.permit("scram-sha-256")?;
                let mut offered = false;
                let mut mechanisms = body.mechanisms();
                while let Ok(Some(mechanism)) =
                    fallible_iterator::FallibleIterator::next(&mut mechanisms)
                {
                    offered |= mechanism == SCRAM_SHA_256;
                }
                if !offered {
                    return Err(LoginError::NoScram);
                }
                let scram = ScramSha256::new(self.password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)
                    .map_err(|e| LoginError::Encode(e.to_string()))?;
                self.scram = Some(scram);
            }
            Message::AuthenticationSaslContinue(body) => {
                let scram = self.scram.as_mut().ok_or(LoginError::Unexpected)?;
                scram
                    .update(body.data())
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), &mut out)
                    .map_err(|e| LoginError::Encode(e.to_string()))?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let scram = self.scram.as_mut().ok_or(LoginError::Unexpected)?;
                scram
                    .finish(body.data())
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                return Ok(LoginStep::Continue);
            }
            Message::AuthenticationKerberosV5 => return Err(LoginError::Unsupported("Kerberos")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(LoginError::Unsupported("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(LoginError::Unsupported("SSPI")),
            Message::AuthenticationScmCredential => {
                return Err(LoginError::Unsupported("SCM credential"))
            }
            _ => return Err(LoginError::Unexpected),
        }
        Ok(LoginStep::Send(out))
    }
}
