//! Where an image is linked: `images/<namespace>/<image>/`, from its
//! repository, and under a registry's own prefix when one is configured.

use std::collections::BTreeMap;

/// Where an image is linked in the store: `images/<namespace>/<image>/`.
///
/// The image is the last component of the repository path and the namespace
/// is everything before it (`library/redis` → `library`, `redis`;
/// `team/sub/app` → `team/sub`, `app`). A single-component repository (only
/// possible outside Docker Hub) gets the namespace `library`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    pub namespace: String,
    pub image: String,
}

impl ImageName {
    pub fn from_repository(repository: &str) -> ImageName {
        match repository.rsplit_once('/') {
            Some((ns, image)) => ImageName {
                namespace: ns.to_string(),
                image: image.to_string(),
            },
            None => ImageName {
                namespace: "library".to_string(),
                image: repository.to_string(),
            },
        }
    }
}

/// Where the images of a registry are linked (`--registry-path
/// HOST=PREFIX`, `EXPLODER_REGISTRY_PATHS`): `HOST/team/app` at
/// `images/PREFIX/team/app/`. A registry without an entry (Docker Hub's
/// `docker.io`, the default registry) links at the bare repository path,
/// as stores have always been laid out. The store refuses to move a tag
/// from one registry's image to another's (`LinkError::OtherRegistry`):
/// this is how two registries with the same repository names coexist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryPaths {
    prefixes: BTreeMap<String, String>,
}

impl RegistryPaths {
    /// From `HOST=PREFIX` items; `HOST` as in references (`host[:port]`,
    /// or `file://ROOT` for a registry's storage directory).
    pub fn parse(items: &[String]) -> Result<RegistryPaths, String> {
        let mut prefixes = BTreeMap::new();
        for item in items {
            let (host, prefix) = item
                .split_once('=')
                .ok_or_else(|| format!("registry path {item:?}: expected HOST=PREFIX"))?;
            let prefix = prefix.trim_matches('/');
            let valid = !host.is_empty()
                && !prefix.is_empty()
                && prefix
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
            if !valid {
                return Err(format!(
                    "registry path {item:?}: expected HOST=PREFIX with PREFIX a path such as \
                     mirror or teams/mirror"
                ));
            }
            prefixes.insert(host.to_string(), prefix.to_string());
        }
        Ok(RegistryPaths { prefixes })
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Where `repository` of `registry` is linked.
    pub fn name(&self, registry: &str, repository: &str) -> ImageName {
        match self.prefixes.get(registry) {
            Some(prefix) => ImageName::from_repository(&format!("{prefix}/{repository}")),
            None => ImageName::from_repository(repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_registry_links_under_its_prefix_and_others_at_the_bare_path() {
        let paths =
            RegistryPaths::parse(&["mirror.example.com=mirror".into(), "b:5000=/x/y/".into()])
                .unwrap();
        let name = |r, p| {
            let n = paths.name(r, p);
            format!("{}/{}", n.namespace, n.image)
        };
        assert_eq!(name("mirror.example.com", "team/app"), "mirror/team/app");
        assert_eq!(name("b:5000", "app"), "x/y/app");
        assert_eq!(name("docker.io", "library/redis"), "library/redis");
        assert_eq!(name("other:5000", "team/app"), "team/app");
        for bad in ["nohost", "=p", "h=", "h=a/../b", "h=//"] {
            assert!(RegistryPaths::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
