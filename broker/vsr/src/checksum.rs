//! 128-bit checksums for prepare headers and bodies (XXH3-128): they detect bit rot on disk and
//! form the hash chain (`parent` = checksum of the previous prepare). Not a MAC: the cluster's
//! network is trusted, its disks are not.

pub fn checksum(parts: &[&[u8]]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest128()
}
