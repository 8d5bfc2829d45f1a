//! TLS to PostgreSQL, as Supabase needs it: `require` encrypts, `verify-full` with
//! `sslrootcert` also checks the certificate, and a certificate that cannot be verified is a
//! clear error rather than a silent plain-text fallback.

use citas_realtime::log::db::DbConfig;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use pgtemp::TempPostgres;

use crate::helpers::{spawn_app, TestDb};

/// A self-signed certificate for localhost / 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    cert.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    cert.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (
        cert.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

#[tokio::test]
async fn tls_modes_against_a_tls_postgres() {
    let (cert, key) = self_signed();
    let mut pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("own cluster");
    pg.enable_tls(&cert, &key).expect("TLS on");
    let db = TestDb::installed_on(&pg).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &cert).unwrap();
    let base = format!("postgres://postgres@localhost:{}/{}", pg.port(), db.name);

    // require: encrypted, end to end.
    let app = spawn_app(&format!("{base}?sslmode=require")).await;
    let encrypted: bool = db
        .client
        .query_one(
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid)
             where a.datname = current_database() and a.application_name = 'citas-realtime-listener'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the listener's connection is not encrypted");
    let mut ws = app.subscriber(&["tls"]).await;
    db.execute("insert into citas (negocio_id) values ('tls')")
        .await;
    ws.expect("cita_created").await;

    // verify-full with the CA: accepted.
    let verified = DbConfig::parse(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca.path().display()
    ))
    .unwrap();
    let (client, connection) = verified
        .connect()
        .await
        .expect("verify-full with the right CA");
    tokio::spawn(connection);
    client
        .simple_query("select 1")
        .await
        .expect("a query over verify-full");

    // verify-full against the system roots: refused, with a message that says why.
    let unverifiable = DbConfig::parse(&format!("{base}?sslmode=verify-full")).unwrap();
    let error = unverifiable
        .connect()
        .await
        .err()
        .expect("a self-signed certificate must not verify");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "unclear error: {error}"
    );
    assert!(
        error
            .to_string()
            .contains("add sslrootcert=<CA file> to DATABASE_URL"),
        "the error says what to do: {error}"
    );

    drop(ws);
    drop(app);
    drop(db);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
