//! Signals: the first SIGTERM or SIGINT asks the pipeline to stop ([`Shutdown`]); a second one
//! exits at once.

use tagstream_consumer::pipeline::Shutdown;

/// Triggers `shutdown` on the first SIGTERM or SIGINT; a second one exits at once (exit 130).
/// The handlers are installed before this returns.
pub fn stop_on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async move {
            let mut seen = 0;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                seen += 1;
                if seen == 1 {
                    tracing::info!("{name} received: finishing the batch in hand, flushing the outbox, leaving the group");
                    shutdown.trigger();
                } else {
                    tracing::warn!("{name} received again: exiting now (state is consistent; undelivered outbox entries go out on the next start)");
                    std::process::exit(130);
                }
            }
        })
    })?;
    Ok(())
}
