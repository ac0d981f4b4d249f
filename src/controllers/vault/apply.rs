//! The vault's writes: create missing filesystem locations.

use super::plan::Action;
use crate::controllers::Error;

pub async fn apply(actions: &[Action]) -> Result<(), Error> {
    for action in actions {
        match action {
            Action::CreateDirectory(path) => {
                tokio::fs::create_dir_all(path)
                    .await
                    .map_err(|e| Error::Storage {
                        location: path.clone(),
                        message: format!("cannot create directory: {e}"),
                    })?;
                tracing::info!(path, "created filesystem storage location");
            }
        }
    }
    Ok(())
}
