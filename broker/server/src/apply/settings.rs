//! Putting the configured settings that shape the replicated state in force
//! (`state::settings`).

use crate::broker::Broker;
use crate::error::Result;
use crate::state::settings::StateSettings;

/// Makes `settings` the ones in force: every partition rolls at the new segment size from its
/// next append (a smaller size than its active segment holds rolls it then), and topics created
/// or updated from here on get the new defaults. Topics already created keep their limits.
pub(super) fn set_state_settings(broker: &Broker, settings: StateSettings) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let before = catalog.settings;
    catalog.settings = Some(settings);
    if let Err(e) = broker.persist(&catalog) {
        catalog.settings = before;
        return Err(e);
    }
    for (_, partition) in catalog.partitions() {
        partition.log().set_segment_size(settings.segment_size);
    }
    tracing::info!(?settings, "state settings in force");
    Ok(())
}
