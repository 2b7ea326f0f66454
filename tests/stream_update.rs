//! `job::stream_masked` (a round's masking, block by block) against `job::mask_update`
//! (file mode, streamed into a signed file): same residues for the same plan and masks; where
//! each reports a NaN; and what file mode journals (the mask key and the input's digest)
//! when it succeeds and when it fails.

mod common;

use std::path::Path;

use common::{Lab, Party, values};
use secagg::files::job::{self, MaskSpec, Stopped};
use secagg::files::masked::{self};
use secagg::files::tensor::{self};
use secagg::layout::{Container, DType, Layout, TensorSpec};
use secagg::party::PartyId;
use secagg::pki::identity::Home;
use secagg::pki::registry::{self, Registry};
use secagg::secagg::quantize::QuantParams;
use secagg::secagg::ring::{Machine, Word};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn registry(home: &Path) -> Registry {
    Registry::open_existing(&Home::new(home).registry_path())
        .expect("registry")
        .expect("exists")
}

/// Three registered nodes and a researcher registered at each; returns the lab and node_1.
fn nodes() -> (Lab, Party) {
    let lab = Lab::new();
    let researcher = lab.party("researcher_1", "researcher", 21000);
    let nodes: Vec<Party> = (1..=3)
        .map(|i| lab.party(&format!("node_{i}"), "node", 21000 + i))
        .collect();
    for a in &nodes {
        a.register(&researcher);
        for b in nodes.iter().filter(|b| b.home != a.home) {
            a.register(b);
        }
    }
    let first = Party {
        home: nodes[0].home.clone(),
    };
    (lab, first)
}

/// A one-tensor `.npy` layout of `n` values.
fn npy(n: u64, dtype: DType) -> Layout {
    Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n],
            dtype,
        }],
    }
}

fn spec(quant: QuantParams, round: u64) -> MaskSpec {
    MaskSpec {
        federation: "fed".into(),
        round,
        label: "update".into(),
        researcher: None,
        participants: ["node_1", "node_2", "node_3"]
            .iter()
            .map(|s| s.parse::<PartyId>().expect("id"))
            .collect(),
        quant,
    }
}

#[test]
fn streamed_blocks_equal_the_whole_masked_vector_and_file_mode_journals_key_and_input() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let layout = npy(10_007, DType::F32);
    // The same party twice (copied home), so the twin can prepare the round file mode
    // has already journaled.
    let twin = lab.path("twin");
    copy_dir(&node.home, &twin);
    let q8 = QuantParams {
        bits: 8,
        max_weight: 100,
        ..QuantParams::default()
    };
    // Each path of file mode: two passes (no memory for the residues, no unnamed file),
    // in memory, and the default, an unnamed file. All must write the residues a round
    // streams.
    for (round, quant, word_bytes, memory) in [
        // 3 x 10^6 x 32767 < 2^39: 5 bytes, computed in u64.
        (1, QuantParams::default(), 5, Some(0)),
        // 3 x 100 x 127 = 38100 < 2^23 (but not 2^15): 3 bytes, computed in u32.
        (2, q8, 3, Some(u64::MAX)),
        (3, QuantParams::default(), 5, None),
        (4, q8, 3, None),
    ] {
        // One input per round: file mode releases an input once.
        let input = lab.path(&format!("u{round}.npy"));
        tensor::write_values(&input, &layout, values(5 + round, 10_007).into_iter())
            .expect("write");
        let spec = spec(quant, round);
        let mut reg = registry(&node.home);
        let digest = job::input_digests(&input, false).expect("digest");
        assert!(!reg.input_released(&digest).expect("query"));
        let out = lab.path(&format!("u{round}.masked"));
        let whole = job::mask_update_with(&me, &mut reg, &spec, &input, 7, &out, 2, 0, memory)
            .expect("mask");
        assert_eq!(whole.staging, staging_for(memory, lab.dir.path()));
        assert!(whole.clipped > 0, "some values are clipped");
        // Journaled: the key is used, and the input (by its digest) released.
        assert!(reg.file_mask_used("fed", round, "update").expect("query"));
        assert!(reg.input_released(&digest).expect("query"));
        assert!(matches!(
            job::prepare(&me, &reg, &spec, 7),
            Err(masked::Error::Registry(registry::Error::MaskReuse { .. }))
        ));
        let twin_reg = registry(&twin);
        let (plan, ctx) = job::prepare(&me, &twin_reg, &spec, 7).expect("twin prepares");
        assert_eq!(&ctx, whole.header.context());
        assert_eq!(plan.wire_bytes(), word_bytes);
        let masks = job::peer_masks(&me, &twin_reg, &ctx).expect("masks");
        let mut streamed: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        macro_rules! stream {
            ($w:ty) => {
                job::stream_masked::<$w, ()>(&plan, &masks, &input, 7, 2, 1000, |at, words| {
                    offsets.push(at);
                    for w in words {
                        let mut b = vec![0u8; word_bytes];
                        w.write_le_narrow(&mut b);
                        streamed.extend_from_slice(&b);
                    }
                    Ok(())
                })
            };
        }
        let done = match plan.modulus.machine() {
            Machine::U32 => stream!(u32),
            Machine::U64 => stream!(u64),
        }
        .expect("stream");
        // The file's payload, read back and verified under the node's key.
        let key = p256::PublicKey::from(me.key.signing_key().verifying_key());
        let mut r = masked::Reader::open(&out).expect("open");
        r.authenticate(&key).expect("header signature");
        let mut expected: Vec<u8> = Vec::new();
        r.stream(|_, b| expected.extend_from_slice(b))
            .expect("read");
        r.verify(&key).expect("file signature");
        assert_eq!(expected.len(), 10_008 * word_bytes);
        assert!(
            streamed == expected,
            "streamed residues differ ({word_bytes}-byte residues)"
        );
        assert_eq!(offsets, (0..=10).map(|i| i * 1000).collect::<Vec<u64>>());
        assert_eq!((done.layout, done.clipped), (layout.clone(), whole.clipped));
        // The wrong word size for the plan is refused before anything is emitted.
        let wrong = match plan.modulus.machine() {
            Machine::U32 => {
                job::stream_masked::<u64, ()>(&plan, &masks, &input, 7, 2, 1000, |_, _| {
                    panic!("nothing may be emitted")
                })
            }
            Machine::U64 => {
                job::stream_masked::<u32, ()>(&plan, &masks, &input, 7, 2, 1000, |_, _| {
                    panic!("nothing may be emitted")
                })
            }
        };
        assert!(matches!(
            wrong,
            Err(Stopped::Masking(masked::Error::Malformed { .. }))
        ));
    }
}

#[test]
fn a_failing_emit_stops_the_stream_and_a_nan_is_reported_where_it_is() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let input = lab.path("u.npy");
    let layout = npy(5000, DType::F64);
    let mut vals = values(9, 5000);
    vals[4321] = f64::NAN;
    tensor::write_values(&input, &layout, vals.into_iter()).expect("write");
    let reg = registry(&node.home);
    let (plan, ctx) = job::prepare(&me, &reg, &spec(QuantParams::default(), 1), 1).expect("plan");
    let masks = job::peer_masks(&me, &reg, &ctx).expect("masks");
    let mut calls = 0;
    let stopped = job::stream_masked::<u64, &str>(&plan, &masks, &input, 1, 1, 1000, |_, _| {
        calls += 1;
        if calls == 2 { Err("link down") } else { Ok(()) }
    });
    assert!(matches!(stopped, Err(Stopped::Emit("link down"))));
    assert_eq!(calls, 2, "no block after the failing one");
    let mut emitted = 0u64;
    let stopped = job::stream_masked::<u64, ()>(&plan, &masks, &input, 1, 1, 1000, |_, w| {
        emitted += w.len() as u64;
        Ok(())
    });
    match stopped {
        Err(Stopped::Masking(e)) => assert!(e.to_string().contains("element 4321"), "{e}"),
        other => panic!("expected a NaN error, got {other:?}"),
    }
    assert_eq!(emitted, 4000, "the blocks before the NaN's block went out");
}

#[test]
fn file_mode_reports_a_nan_where_it_is_and_journals_nothing() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let input = lab.path("u.npy");
    let layout = npy(200_000, DType::F32);
    // Past the first 128 Ki-value block, so the index must be carried across blocks.
    let mut vals = values(3, 200_000);
    vals[150_000] = f64::NAN;
    tensor::write_values(&input, &layout, vals.iter().copied()).expect("write");
    let spec = spec(QuantParams::default(), 7);
    let mut reg = registry(&node.home);
    let out = lab.path("u.masked");
    let err =
        job::mask_update(&me, &mut reg, &spec, &input, 1, &out, 2, 0).expect_err("NaN refused");
    assert!(err.to_string().contains("element 150000"), "{err}");
    assert!(!reg.file_mask_used("fed", 7, "update").expect("query"));
    // Nothing is left behind: no file, no temporary beside it.
    assert!(!out.exists());
    let strays: Vec<_> = std::fs::read_dir(out.parent().expect("dir"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".u.masked."))
        .collect();
    assert!(strays.is_empty(), "temporary files left: {strays:?}");
    // Nothing was journaled: once the file is fixed, the same round masks.
    vals[150_000] = 0.5;
    tensor::write_values(&input, &layout, vals.into_iter()).expect("write");
    assert!(job::mask_update(&me, &mut reg, &spec, &input, 1, &out, 2, 0).is_ok());
    assert!(out.exists());
    let digest = job::input_digests(&input, false).expect("digest");
    assert!(reg.input_released(&digest).expect("query"));
}

#[test]
fn the_researcher_is_resolved_or_refused_by_name() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let reg = registry(&node.home);
    let quant = QuantParams::default();
    let (_, ctx) = job::prepare(&me, &reg, &spec(quant, 1), 1).expect("the only researcher");
    let (id, fp) = job::researcher(&reg, None).expect("resolved");
    assert_eq!((id.as_str(), ctx.researcher), ("researcher_1", fp));
    let named = MaskSpec {
        researcher: Some("node_2".parse().expect("id")),
        ..spec(quant, 1)
    };
    assert!(matches!(
        job::prepare(&me, &reg, &named, 1),
        Err(masked::Error::UnknownResearcher(id)) if id.as_str() == "node_2"
    ));
    let second = lab.party("researcher_2", "researcher", 21010);
    node.register(&second);
    assert!(matches!(
        job::prepare(&me, &reg, &spec(quant, 1), 1),
        Err(masked::Error::ManyResearchers(2, ids)) if ids == "researcher_1, researcher_2"
    ));
    let chosen = MaskSpec {
        researcher: Some("researcher_2".parse::<PartyId>().expect("id")),
        ..spec(quant, 1)
    };
    let (_, ctx2) = job::prepare(&me, &reg, &chosen, 1).expect("chosen");
    assert_ne!(ctx2.researcher, ctx.researcher);
}

/// Watches `dir` for a staged masked file named `.{name}.*.tmp` and hard-links it away
/// (as a sync client, a backup agent or another local user could).
fn capture(
    dir: std::path::PathBuf,
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Option<std::path::PathBuf>> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for e in std::fs::read_dir(&dir).expect("ls").flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if f.starts_with(&format!(".{name}.")) && f.ends_with(".tmp") {
                    let keep = dir.join("captured.masked");
                    if std::fs::hard_link(e.path(), &keep).is_ok() {
                        return Some(keep);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        None
    })
}

/// The path `mask_update_with(.., memory)` takes for an output in `dir`: the default
/// stages in an unnamed file where the directory's filesystem is a local one that has
/// them (Linux), else in memory; a budget forces memory or, below the residues' size,
/// two passes.
fn staging_for(memory: Option<u64>, dir: &Path) -> job::Staging {
    match memory {
        Some(0) => job::Staging::TwoPasses,
        Some(_) => job::Staging::Memory,
        #[cfg(target_os = "linux")]
        None => {
            let kind = rustix::fs::statfs(dir).expect("statfs").f_type as u32;
            if secagg::atomic::LOCAL_FILESYSTEMS.contains(&kind) {
                job::Staging::Unnamed
            } else {
                job::Staging::Memory
            }
        }
        #[cfg(not(target_os = "linux"))]
        None => job::Staging::Memory,
    }
}

/// No masked byte of an input may reach the disk before its mask key and its release
/// are journaled. Otherwise a masking refused at the journal (here: the input was
/// already released in round 1) leaves the round's key unused while a complete, signed
/// masking of A under that key sat in the staged file; masking B for the same round
/// then gives the researcher A - B in the clear. (Found in review; the test fails when
/// `mask_update` journals after streaming.)
#[test]
fn no_masked_bytes_reach_the_disk_before_the_key_is_journaled() {
    // Every path: an unnamed file, residues in memory, two passes into the file.
    for memory in [None, Some(u64::MAX), Some(0)] {
        no_masked_bytes_before_the_journal(memory);
    }
}

fn no_masked_bytes_before_the_journal(memory: Option<u64>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let n = 2_000_000u64;
    let layout = npy(n, DType::F32);
    let (va, vb) = (values(1, n as usize), values(2, n as usize));
    let (a, b) = (lab.path("a.npy"), lab.path("b.npy"));
    tensor::write_values(&a, &layout, va.iter().copied()).expect("write a");
    tensor::write_values(&b, &layout, vb.iter().copied()).expect("write b");
    let mut reg = registry(&node.home);
    let quant = QuantParams::default();
    job::mask_update_with(
        &me,
        &mut reg,
        &spec(quant, 1),
        &a,
        7,
        &lab.path("a1.masked"),
        1,
        0,
        memory,
    )
    .expect("round 1");
    // Round 2: A again, by mistake. Refused...
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = capture(lab.dir.path().to_owned(), "a2.masked", stop.clone());
    let refused = job::mask_update_with(
        &me,
        &mut reg,
        &spec(quant, 2),
        &a,
        7,
        &lab.path("a2.masked"),
        1,
        0,
        memory,
    );
    stop.store(true, Ordering::Relaxed);
    let captured = watcher.join().expect("watcher");
    let err = refused.expect_err("A is already released");
    assert!(err.to_string().contains("already released"), "{err}");
    assert!(!lab.path("a2.masked").exists());
    // ... before a single masked byte was staged.
    assert_eq!(
        captured, None,
        "a masking of A for round 2 reached the disk"
    );
    // Nothing was journaled for round 2, so B masks for it.
    let b2 = job::mask_update_with(
        &me,
        &mut reg,
        &spec(quant, 2),
        &b,
        7,
        &lab.path("b2.masked"),
        1,
        0,
        memory,
    )
    .expect("B for round 2");
    assert_eq!(b2.staging, staging_for(memory, lab.dir.path()));
    // The masked file is for the researcher and this node only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.path("b2.masked"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A release row as a secagg before input digest version 2 wrote it: the version-1
/// (SHA-256) digest, with the statement that secagg ran.
fn legacy_release(home: &Path, v1: &[u8; 32], round: u64) {
    let conn = rusqlite::Connection::open(Home::new(home).registry_path()).expect("open");
    let hex: String = v1.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute(
        "INSERT INTO releases (digest, mode, federation, round, released_at)
         VALUES (?1, 'file', 'old', ?2, 0)",
        rusqlite::params![hex, round as i64],
    )
    .expect("legacy row");
}

/// Every release row: (digest, digest_version, federation, round).
fn releases(home: &Path) -> Vec<(String, i64, String, i64)> {
    let conn = rusqlite::Connection::open(Home::new(home).registry_path()).expect("open");
    let mut stmt = conn
        .prepare("SELECT digest, digest_version, federation, round FROM releases ORDER BY 1")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn an_input_released_under_digest_version_1_is_refused_on_every_path() {
    for memory in [None, Some(u64::MAX), Some(0)] {
        let (lab, node) = nodes();
        let me = Home::new(&node.home).load_identity().expect("identity");
        let layout = npy(3001, DType::F32);
        let (a, b) = (lab.path("a.npy"), lab.path("b.npy"));
        tensor::write_values(&a, &layout, values(11, 3001).into_iter()).expect("write a");
        tensor::write_values(&b, &layout, values(12, 3001).into_iter()).expect("write b");
        let da = job::input_digests(&a, true).expect("digest");
        legacy_release(&node.home, &da.v1.expect("v1"), 5);
        let before = releases(&node.home);
        let mut reg = registry(&node.home);
        assert!(reg.legacy_releases().expect("query"));
        let out = lab.path("a.masked");
        let err = job::mask_update_with(
            &me,
            &mut reg,
            &spec(QuantParams::default(), 6),
            &a,
            7,
            &out,
            1,
            0,
            memory,
        )
        .expect_err("A was released under version 1");
        assert!(
            err.to_string()
                .contains("already released (file mode, federation 'old', round 5)"),
            "{memory:?}: {err}"
        );
        assert!(!out.exists());
        assert!(!reg.file_mask_used("fed", 6, "update").expect("query"));
        assert_eq!(
            releases(&node.home),
            before,
            "{memory:?}: nothing journaled"
        );
        // A new input masks, and is journaled under version 2 only.
        let masked_b = job::mask_update_with(
            &me,
            &mut reg,
            &spec(QuantParams::default(), 6),
            &b,
            7,
            &out,
            1,
            0,
            memory,
        )
        .expect("B is new");
        assert_eq!(masked_b.staging, staging_for(memory, lab.dir.path()));
        let db = job::input_digests(&b, true).expect("digest");
        let hex = |d: &[u8; 32]| d.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut want = before.clone();
        want.push((hex(&db.v2), 2, "fed".into(), 6));
        want.sort();
        assert_eq!(releases(&node.home), want, "{memory:?}");
        assert!(reg.input_released(&db).expect("query"));
    }
}

#[test]
fn a_checked_stream_masks_what_was_checked_and_stops_at_the_first_changed_block() {
    let (lab, node) = nodes();
    let me = Home::new(&node.home).load_identity().expect("identity");
    let input = lab.path("u.npy");
    // 600,000 f32 values: 2.4 MB, three 1 MiB read blocks (262,144 values each).
    let layout = npy(600_000, DType::F32);
    let vals = values(5, 600_000);
    tensor::write_values(&input, &layout, vals.iter().copied()).expect("write");
    let (summary, blocks) = job::inspect_input_blocks(&input, false).expect("inspect");
    assert_eq!(blocks.len(), 3);
    let reg = registry(&node.home);
    let (plan, ctx) = job::prepare(&me, &reg, &spec(QuantParams::default(), 1), 1).expect("plan");
    let masks = job::peer_masks(&me, &reg, &ctx).expect("masks");
    // Only each word's low 8·w bits are its residue (the bits above depend on which
    // code path added which word), so the residues are what is compared.
    let residue = u64::MAX >> (64 - 8 * plan.wire_bytes() as u32);
    let collect = |checked: Option<&[[u8; 32]]>| {
        let checked = checked.map(|blocks| job::Checked {
            layout: &summary.layout,
            blocks,
        });
        let mut out: Vec<u64> = Vec::new();
        let emit = |_: u64, w: &[u64]| {
            out.extend(w.iter().map(|x| x & residue));
            Ok::<(), ()>(())
        };
        let done = match checked {
            Some(c) => {
                job::stream_checked::<u64, ()>(&plan, &masks, &input, 7, 2, 100_000, c, emit)
            }
            None => job::stream_masked::<u64, ()>(&plan, &masks, &input, 7, 2, 100_000, emit),
        };
        (done, out)
    };
    // Unchanged: the same words as the unchecked stream.
    let (done, checked_words) = collect(Some(&blocks));
    assert!(done.is_ok(), "{done:?}");
    let (done, plain_words) = collect(None);
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(checked_words, plain_words);
    assert_eq!(checked_words.len(), 600_001);
    // One value of the third block changed in place, same layout: the stream stops
    // before masking anything of that block.
    let mut changed = vals.clone();
    changed[550_000] += 0.25;
    tensor::write_values(&input, &layout, changed.iter().copied()).expect("rewrite");
    let (done, words) = collect(Some(&blocks));
    match done {
        Err(Stopped::Masking(e)) => assert!(
            e.to_string().contains("changed after it was checked"),
            "{e}"
        ),
        other => panic!("expected the change to stop the stream, got {other:?}"),
    }
    assert!(words.len() <= 2 * 262_144, "{} words went out", words.len());
    assert_eq!(
        words[..],
        plain_words[..words.len()],
        "what went out is what was checked"
    );
    // A digest list that is one block short (or long) is refused too.
    tensor::write_values(&input, &layout, vals.iter().copied()).expect("restore");
    let (done, _) = collect(Some(&blocks[..2]));
    assert!(matches!(done, Err(Stopped::Masking(_))), "{done:?}");
    let mut longer = blocks.clone();
    longer.push([0; 32]);
    let (done, _) = collect(Some(&longer));
    assert!(matches!(done, Err(Stopped::Masking(_))), "{done:?}");
    // The same data bytes under another header: read as 300,000 f64 values, every block
    // has its digest and the count is the same; the layout is not, and nothing goes out.
    let bytes: Vec<f64> = vals
        .iter()
        .map(|v| *v as f32)
        .collect::<Vec<f32>>()
        .chunks_exact(2)
        .map(|p| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&p[0].to_le_bytes());
            b[4..].copy_from_slice(&p[1].to_le_bytes());
            f64::from_le_bytes(b)
        })
        .collect();
    assert!(bytes.iter().all(|x| x.is_finite()));
    tensor::write_values(&input, &npy(300_000, DType::F64), bytes.into_iter()).expect("f64");
    let (_, reread) = job::inspect_input_blocks(&input, false).expect("inspect");
    assert_eq!(reread, blocks, "the data bytes are the same");
    let (done, words) = collect(Some(&blocks));
    match done {
        Err(Stopped::Masking(e)) => assert!(
            e.to_string().contains("changed after it was checked"),
            "{e}"
        ),
        other => panic!("expected the new header to stop the stream, got {other:?}"),
    }
    assert!(words.is_empty(), "{} words went out", words.len());
}

/// An output directory that cannot take the file is refused before the journal on every
/// path (the fallbacks write only after it: found there, it would use up the round and
/// the update).
#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_journal_on_every_path() {
    for memory in [None, Some(u64::MAX), Some(0)] {
        let (lab, node) = nodes();
        let me = Home::new(&node.home).load_identity().expect("identity");
        let input = lab.path("u.npy");
        tensor::write_values(&input, &npy(3001, DType::F32), values(9, 3001).into_iter())
            .expect("write");
        let mut reg = registry(&node.home);
        let before = releases(&node.home);
        let out = lab.path("missing/u.masked");
        let err = job::mask_update_with(
            &me,
            &mut reg,
            &spec(QuantParams::default(), 1),
            &input,
            7,
            &out,
            1,
            0,
            memory,
        )
        .expect_err("no such directory");
        assert!(
            matches!(
                &err,
                masked::Error::Io {
                    action: "write the masked file at",
                    ..
                }
            ),
            "{memory:?}: {err}"
        );
        assert_eq!(
            releases(&node.home),
            before,
            "{memory:?}: nothing journaled"
        );
        assert!(
            !reg.file_mask_used("fed", 1, "update").expect("query"),
            "{memory:?}"
        );
    }
}
