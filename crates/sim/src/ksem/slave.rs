//! [`serve_slave`]: the KSEM's Modbus TCP slave, FC03/FC04 over the three blocks of the
//! model. Touches the listener it is given.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use airbridge::link::tcp_front::Answering;

use super::{lock_model, SharedModel, MAX_READ_COUNT};

/// Answer one request from the model: FC03/FC04 over the three blocks, any unit id.
fn answer(model: &SharedModel, request: &Request<'_>) -> Result<Response, ExceptionCode> {
    let read = |address: u16, count: u16| {
        if count == 0 || count > MAX_READ_COUNT {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        lock_model(model)
            .read(address, count)
            .ok_or(ExceptionCode::IllegalDataAddress)
    };
    match *request {
        Request::ReadHoldingRegisters(address, count) => {
            read(address, count).map(Response::ReadHoldingRegisters)
        }
        Request::ReadInputRegisters(address, count) => {
            read(address, count).map(Response::ReadInputRegisters)
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

/// Serve the KSEM's Modbus TCP slave on `listener` until `cancel`.
///
/// FC03 and FC04 (same data) for any unit id; exception 02 for ranges outside the
/// blocks or counts outside 1..=125; exception 01 for any other function.
pub async fn serve_slave(
    listener: TcpListener,
    model: SharedModel,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let server = Server::new(listener);
    let on_connected = |stream, socket_addr| {
        let model = model.clone();
        async move {
            accept_tcp_connection(stream, socket_addr, move |_| {
                let model = model.clone();
                Ok(Some(Answering(move |req: SlaveRequest<'static>| {
                    answer(&model, &req.request)
                })))
            })
        }
    };
    let on_process_error = |err: std::io::Error| {
        tracing::debug!(%err, "KSEM sim slave: connection ended with an error");
    };
    // Dropping `serve` (on cancel) also ends every connection task it spawned.
    match cancel
        .run_until_cancelled(server.serve(&on_connected, on_process_error))
        .await
    {
        Some(result) => result.context("KSEM sim slave: accept failed"),
        None => Ok(()),
    }
}
