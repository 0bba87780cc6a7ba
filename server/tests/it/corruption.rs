//! Corruption sweep: flip bytes in, and truncate, every kind of file at many offsets. Each case must be
//! detected (by `croupier inspect`, at restart, or at read) and no wrong byte may ever be served; the
//! other shuffles stay readable.

use crate::common::*;
use croupier_client::loadgen;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Fetches every map of the damaged shuffle one by one: each either fails or is exactly right.
async fn assert_never_wrong(server: &TestServer, spec: &loadgen::LoadSpec, case: &str) -> u32 {
    let client = server.client().await;
    let mut served = 0;
    for map in 0..spec.maps {
        let Ok((blocks, _)) = client
            .fetch(fetch_req(
                &spec.app,
                spec.shuffle,
                0..spec.partitions,
                map..map + 1,
            ))
            .await
        else {
            continue;
        };
        assert_map_bytes(spec, map, &blocks, case);
        served += 1;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flip_and_truncation_is_detected_and_never_served() {
    let mut server = TestServer::start(
        1,
        "chunk_bytes_target = \"32KiB\"\nsegment_bytes_max = \"256KiB\"",
    );
    let victim = load_spec(&server.grpc, "victim", 1, 4, 3, 200_000, 9_000);
    let bystander = load_spec(&server.grpc, "bystander", 1, 2, 2, 100_000, 9_000);
    loadgen::load(victim.clone()).await.unwrap();
    loadgen::load(bystander.clone()).await.unwrap();
    server.kill9();
    let dir = server.shuffle_dir("victim", 1).unwrap();
    let pristine = server.tmp_path().join("pristine");
    copy_dir(&dir, &pristine);

    let mut files: Vec<String> = std::fs::read_dir(&pristine)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert!(
        files.iter().filter(|f| f.starts_with("seg-")).count() >= 2,
        "{files:?}"
    );
    let mut cases = 0;
    for file in &files {
        let original = std::fs::read(pristine.join(file)).unwrap();
        // Every segment append ends with zero padding to a 4 KiB boundary (FORMAT.md section 6.1): no
        // checksum covers it, since nothing reads it. In a segment, an offset that falls in padding
        // moves on to the next nonzero byte (the data is pseudo-random; padding is all zeros).
        let is_segment = file.starts_with("seg-");
        let padding = if is_segment {
            original
                .iter()
                .rev()
                .take(4095)
                .take_while(|&&b| b == 0)
                .count()
        } else {
            0
        };
        let len = original.len() - padding;
        // 7 spread offsets (first byte, last byte, and between), each flipped and each cut.
        let offsets: Vec<usize> = (0..7)
            .map(|i| if i == 6 { len - 1 } else { i * len / 6 })
            .map(|at| match is_segment {
                true => (at..len).find(|&i| original[i] != 0).unwrap_or(at),
                false => at,
            })
            .collect();
        for &at in &offsets {
            for truncate in [false, true] {
                let case = format!("{file} {} at {at}", if truncate { "cut" } else { "flip" });
                let mut damaged = original.clone();
                if truncate {
                    damaged.truncate(at);
                } else {
                    damaged[at] ^= 0x5a;
                }
                std::fs::remove_dir_all(&dir).unwrap();
                copy_dir(&pristine, &dir);
                std::fs::write(dir.join(file), &damaged).unwrap();

                let (clean, report) = inspect_dir(&dir);
                if !truncate {
                    // Every byte of every file is covered by a checksum.
                    assert!(!clean, "{case}: not detected by inspect");
                    assert!(
                        report
                            .lines()
                            .any(|l| l.starts_with("DAMAGE") && l.contains(file.as_str())),
                        "{case}: {report}"
                    );
                } else if file != "commit.log" && at > 0 {
                    // A cut is either damage or a torn tail (commit.log cut at a record boundary just
                    // forgets whole commits, which is not wrong data).
                    assert!(!clean || report.contains("TORN"), "{case}: {report}");
                }
                server.restart();
                let mut spec = victim.clone();
                spec.server = server.grpc.clone();
                assert_never_wrong(&server, &spec, &case).await;
                let mut other = bystander.clone();
                other.server = server.grpc.clone();
                assert_verified(&other).await;
                server.kill9();
                cases += 1;
            }
        }
    }
    assert!(cases >= 60, "only {cases} cases");
}
