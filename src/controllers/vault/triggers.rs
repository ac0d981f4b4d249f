//! What makes vaults reconcile besides their own changes: a node whose zone or region labels
//! changed, or that went away, may change whether any vault's cache and target are separated.

use crate::api::RecoveryVault;
use crate::controllers::triggers::{Cached, Ref, all};

/// Every vault, for a node change (the operator passes on only label changes and removals).
pub fn on_node(vaults: &[Cached<RecoveryVault>]) -> Vec<Ref<RecoveryVault>> {
    all(vaults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::triggers::fixtures::{malformed, names, vault};

    #[test]
    fn a_node_change_reconciles_every_vault_even_a_malformed_one() {
        let vaults = [
            vault("apps", "v1"),
            vault("other", "v2"),
            malformed("apps", "bad"),
        ];
        assert_eq!(
            names(&on_node(&vaults)),
            ["apps/v1", "other/v2", "apps/bad"]
        );
        assert!(on_node(&[]).is_empty());
    }
}
