//! The broker side of a connection attempt: the rumqttc options (client id, keep-alive,
//! last will, credentials from `mqtt.password_file`), the rustls config (`mqtt.ca_file` or
//! the system's roots), and a clear log line for every refusal or connection error.
//!
//! May touch: reads the password and CA files named in the config; nothing else.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    ConnectReturnCode, ConnectionError, LastWill, MqttOptions, QoS, TlsConfiguration, Transport,
};

use super::MqttServer;
use crate::config::MqttConfig;

impl MqttServer {
    /// Connection options for one attempt (reads the password and CA files now).
    pub(super) fn options(&self) -> Result<MqttOptions, String> {
        let c = &self.cfg;
        let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_last_will(LastWill::new(
            self.topics.gateway(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &c.username {
            let password = match &c.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read mqtt.password_file {}: {e}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if c.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(c)?,
            )));
        }
        Ok(o)
    }
}

/// A clear line for a refused login.
pub(super) fn refused(code: ConnectReturnCode) -> String {
    match code {
        ConnectReturnCode::BadUserNamePassword => {
            "the broker refused the login: bad user name or password (mqtt.username, mqtt.password_file)".into()
        }
        ConnectReturnCode::NotAuthorized => {
            "the broker refused the login: not authorized (mqtt.username, mqtt.password_file)".into()
        }
        ConnectReturnCode::BadClientId => "the broker refused the client id (mqtt.client_id)".into(),
        other => format!("the broker refused the connection: {other:?}"),
    }
}

/// A clear line for a connection error.
pub(super) fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => refused(*code),
        ConnectionError::Io(io) => format!("broker unreachable: {io}"),
        ConnectionError::Tls(t) => format!("TLS failed: {t}"),
        ConnectionError::NetworkTimeout => "broker unreachable: connect timed out".into(),
        other => format!("connection lost: {other}"),
    }
}

/// The rustls client config: the configured CA, or the system's roots; ring as provider.
pub(super) fn tls_config(c: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read mqtt.ca_file {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("mqtt.ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("mqtt.ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "mqtt.ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set mqtt.ca_file".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
