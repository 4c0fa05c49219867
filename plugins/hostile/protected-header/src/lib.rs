//! Test plugin: tries to overwrite `webhook-signature` (or, with config
//! `remove = "true"`, to remove `webhook-id`). hookd must refuse the patch.

use hookd_plugin_sdk::{export, Config, Error, Event, Patch, Plugin, Verdict};

struct ProtectedHeader;

impl Plugin for ProtectedHeader {
    fn transform(_event: Event, config: &Config) -> Result<Verdict, Error> {
        if config.get("remove") == Some("true") {
            return Ok(Patch::default().remove_header("Webhook-Id").into());
        }
        Ok(Patch::default().set_header("Webhook-Signature", "v1,forged").into())
    }
}

export!(ProtectedHeader);
