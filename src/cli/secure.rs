//! `secagg mask`, `secagg aggregate` and `secagg bench`.

use std::time::{Instant, SystemTime};

use super::Failure;
use super::args::{AggregateArgs, BenchArgs, MaskArgs, QuantArgs};
use secagg::clock::unix_secs;
use secagg::files::aggregate::{self, Progress};
use secagg::files::job::MaskSpec;
use secagg::files::tensor::{self};
use secagg::party::PartyId;
use secagg::pki::identity::Home;
use secagg::pki::registry::Registry;
use secagg::secagg::bench::{self};
use secagg::secagg::prg::{self as mask};
use secagg::secagg::quantize::QuantParams;

pub(super) fn quant(q: QuantArgs) -> QuantParams {
    QuantParams {
        clip: q.clip,
        bits: q.bits,
        max_weight: q.max_weight,
    }
}

pub(super) fn parse_ids(ids: &[String]) -> Result<Vec<PartyId>, Failure> {
    ids.iter()
        .map(|s| s.trim().parse().map_err(Failure::from))
        .collect()
}

pub(super) fn mask(home: &Home, a: MaskArgs, quiet: bool) -> Result<(), Failure> {
    let say = Say(quiet);
    let me = home.load_identity()?;
    let mut reg = Registry::open(&home.registry_path())?;
    tensor::container_of(&a.input)?;
    if tensor::container_of(&a.out).is_ok() {
        return Err(Failure::new(
            format!("--out {} would look like an update file", a.out.display()),
            Some("name masked files e.g. node_1.masked".into()),
        ));
    }
    let researcher = a
        .researcher
        .as_deref()
        .map(|id| id.trim().parse::<PartyId>())
        .transpose()?;
    let spec = MaskSpec {
        federation: a.federation,
        round: a.round,
        label: a.label,
        participants: parse_ids(&a.participants)?,
        researcher,
        quant: quant(a.quant),
    };
    let t = Instant::now();
    say.line(format_args!(
        "masking {} for round {} with {} other node(s)...",
        a.input.display(),
        spec.round,
        spec.participants.len().saturating_sub(1)
    ));
    let now = unix_secs(SystemTime::now());
    let m = secagg::files::job::mask_update(
        &me,
        &mut reg,
        &spec,
        &a.input,
        a.weight,
        &a.out,
        mask::default_threads(),
        now,
    )?;
    report_clipped(m.clipped, m.header.layout.elements(), spec.quant.clip);
    say.line(format_args!(
        "wrote {} ({} values, modulus {}, {} bytes each) in {:.2}s",
        a.out.display(),
        m.header.layout.elements(),
        m.header.modulus,
        m.header.modulus.word_bytes(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Progress lines on stderr, unless `-q`.
#[derive(Clone, Copy)]
struct Say(bool);

impl Say {
    fn line(self, args: std::fmt::Arguments<'_>) {
        if !self.0 {
            eprintln!("{args}");
        }
    }
}

pub(super) fn report_clipped(clipped: u64, total: u64, clip: f64) {
    if clipped > 0 {
        eprintln!(
            "warning: {clipped} of {total} values ({:.4}%) were outside [-{clip}, {clip}] and were clipped; consider a larger --clip",
            clipped as f64 * 100.0 / total.max(1) as f64
        );
    }
}

pub(super) fn aggregate(home: &Home, a: AggregateArgs, quiet: bool) -> Result<(), Failure> {
    let say = Say(quiet);
    let reg = Registry::open_read_only(&home.registry_path())?.ok_or_else(|| {
        Failure::new(
            format!("no registry in {}", home.root().display()),
            Some("register the nodes first with 'secagg certificate register'".into()),
        )
    })?;
    let me = home.load_identity()?;
    let t = Instant::now();
    let n = a.files.len();
    let own = me.certificate.fingerprint();
    let now = unix_secs(SystemTime::now());
    let threads = mask::default_threads();
    let result = aggregate::aggregate_files(&reg, &own, &a.files, now, threads, |p| match p {
        Progress::Checked(k) => say.line(format_args!("checked {k} header(s); summing...")),
        Progress::Summed(i, who) => say.line(format_args!("  [{i}/{n}] {who}: signature ok")),
    })?;
    let header = &result.header;
    let out_kind = tensor::container_of(&a.out)?;
    if out_kind != header.layout.container {
        return Err(Failure::new(
            format!(
                "--out {} does not match the inputs' format ({:?})",
                a.out.display(),
                header.layout.container
            ),
            Some("use the same extension the nodes' updates had (.npy or .safetensors)".into()),
        ));
    }
    tensor::write_encoded(&a.out, &header.layout, &result.mean)?;
    say.line(format_args!(
        "wrote weighted mean of {n} node(s) (total weight {}) to {} in {:.2}s",
        result.total_weight,
        a.out.display(),
        t.elapsed().as_secs_f64()
    ));
    if a.json {
        let participants: Vec<&str> = header
            .context
            .participants
            .iter()
            .map(|p| p.as_str())
            .collect();
        let summary = serde_json::json!({
            "federation": header.context.federation,
            "round": header.context.round,
            "role": "researcher",
            "mode": "file",
            "participants": participants,
            "total_weight": result.total_weight,
            "out": a.out.display().to_string(),
        });
        println!("{summary}");
    }
    Ok(())
}

pub(super) fn bench(a: BenchArgs, quiet: bool) -> Result<(), Failure> {
    let say = Say(quiet);
    if a.nodes < 2 || a.len == 0 {
        return Err(Failure::new(
            "bench needs --nodes >= 2 and --len >= 1".into(),
            Some("e.g. secagg bench --nodes 10 --len 10000000".into()),
        ));
    }
    let threads = a.threads.unwrap_or_else(mask::default_threads).max(1);
    say.line(format_args!(
        "secagg bench: {} nodes, {} elements, {threads} thread(s)",
        a.nodes, a.len
    ));
    let report = bench::run(a.nodes, a.len, threads, |line| {
        say.line(format_args!("  {line}"))
    });
    if a.json {
        println!("{}", super::certificate::to_json(&report)?);
    } else {
        println!("threads                 {}", report.threads);
        println!(
            "modulus                 2^{} ({} bytes per value)",
            report.modulus_bits, report.width_bytes
        );
        println!(
            "raw PRG ({} streams)     {:>10.0} MiB/s",
            report.nodes - 1,
            report.prg_bytes_per_sec / 1048576.0
        );
        println!(
            "memory add              {:>10.0} MiB/s",
            report.add_bytes_per_sec / 1048576.0
        );
        println!(
            "BLAKE3                  {:>10.0} MiB/s",
            report.hash_bytes_per_sec / 1048576.0
        );
        println!(
            "masking                 {:>10.1} M elem/s   {:>5.1}% of raw PRG",
            report.mask_elems_per_sec / 1e6,
            report.mask_ratio * 100.0
        );
        println!(
            "aggregation             {:>10.1} M elem/s   {:>5.1}% of memory add",
            report.aggregate_elems_per_sec / 1e6,
            report.aggregate_ratio * 100.0
        );
    }
    Ok(())
}
