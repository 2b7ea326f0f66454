//! The command line, as clap derive structs. Doc comments are the help text; no logic here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exchange certificates out of band and run secure aggregation with them.
///
/// A party (a hospital node, or the researcher who aggregates) generates a key and a
/// certificate, prints registration instructions, and registers its peers' certificates.
/// Those registered certificates then key the pairwise masks of secure aggregation.
#[derive(Debug, Parser)]
#[command(name = "secagg", version, propagate_version = true)]
pub struct Cli {
    /// Home directory of this party (config, key, certificate, registry).
    ///
    /// Defaults to $SECAGG_HOME, then the platform data directory.
    #[arg(long, global = true, env = "SECAGG_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// More log output on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress lines on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage this party's certificate and the registry of peers.
    #[command(subcommand)]
    Certificate(CertificateCmd),
    /// Set up a federation with one signed roster instead of pairwise registrations.
    #[command(subcommand)]
    Federation(FederationCmd),
    /// Node: quantize, weight and mask an update file for a round (file mode).
    Mask(MaskArgs),
    /// Researcher: verify and sum masked files into the weighted mean (file mode).
    Aggregate(AggregateArgs),
    /// Run a secure round over mutual TLS: the researcher serves, nodes join.
    #[command(subcommand)]
    Round(RoundCmd),
    /// Measure what a round costs on this machine, like `openssl speed`.
    Bench(BenchArgs),
    /// Print shell completions, e.g. `secagg completions bash > /etc/bash_completion.d/secagg`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command and subcommand (secagg.1, secagg-certificate-register.1, ...).
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Party roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// A data holder that masks its update.
    Node,
    /// The aggregator.
    Researcher,
}

/// `secagg certificate ...`
#[derive(Debug, Subcommand)]
pub enum CertificateCmd {
    /// Create this party's P-256 key and self-signed certificate.
    Generate(GenerateArgs),
    /// Print what a peer needs to register this party: PEM, fingerprint and command.
    RegistrationInstructions(InstructionsArgs),
    /// Register a peer's certificate after checking it.
    Register(RegisterArgs),
    /// List registered peers.
    List(ListArgs),
    /// Remove a peer from the registry.
    Delete(DeleteArgs),
    /// Make a new certificate for the same key (the old one is kept as .bak-<time>) and
    /// print the new registration instructions; peers register it again with --upsert.
    Renew(RenewArgs),
}

/// `certificate renew`
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Lifetime of the new certificate in days.
    #[arg(long, value_name = "D", default_value_t = 365)]
    pub validity_days: u32,
    /// Print the new instructions as one JSON object on stdout instead.
    #[arg(long)]
    pub json: bool,
}

/// `secagg federation ...`
#[derive(Debug, Subcommand)]
pub enum FederationCmd {
    /// Researcher: build and sign a roster from the parties' registration instructions,
    /// and register every member here.
    ///
    /// Each INSTRUCTIONS file holds what a party's 'secagg certificate
    /// registration-instructions' printed (text or --json). Every certificate is checked
    /// as 'certificate register' checks it; nothing is registered unless all pass. For a
    /// federation created here before, this makes its next version: pass the complete
    /// new member list; dropped members are removed here.
    Create(FederationCreateArgs),
    /// Print a roster's members, their fingerprints and the roster fingerprint.
    Show(FederationShowArgs),
    /// Check a roster and register every other member, in one transaction.
    ///
    /// The first roster of a federation needs --fingerprint (read out by the researcher
    /// over a trusted channel). A next version that only removes members or changes
    /// addresses needs only the researcher's signature and a confirmation (--yes); one
    /// that adds a member or a certificate needs the new --fingerprint.
    Import(FederationImportArgs),
}

/// `federation create`
#[derive(Debug, Args)]
pub struct FederationCreateArgs {
    /// Federation name (1-64 characters of A-Z a-z 0-9 . _ -), e.g. the study name.
    #[arg(long, value_name = "F")]
    pub name: String,
    /// Where to write the signed roster (TOML).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// One file per member: its registration instructions.
    #[arg(value_name = "INSTRUCTIONS", required = true)]
    pub instructions: Vec<PathBuf>,
}

/// `federation show`
#[derive(Debug, Args)]
pub struct FederationShowArgs {
    /// The roster file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `federation import`
#[derive(Debug, Args)]
pub struct FederationImportArgs {
    /// The roster file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The roster fingerprint the researcher read out (AB:CD:..., as 'federation show' prints it).
    #[arg(long, value_name = "FP")]
    pub fingerprint: Option<String>,
    /// For a next version without --fingerprint: apply the changes without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `certificate generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// This party's role.
    #[arg(long, value_enum, default_value = "node")]
    pub role: RoleArg,
    /// Party id (1-64 characters of A-Z a-z 0-9 . _ -). Default: <role>_<uuid>.
    #[arg(long, value_name = "ID")]
    pub party_id: Option<String>,
    /// IP address or DNS name peers use to reach this party (goes in the certificate SAN).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub ip: String,
    /// TCP port peers use to reach this party.
    #[arg(long, value_name = "PORT", default_value_t = 50051)]
    pub port: u64,
    /// Certificate lifetime in days.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub validity_days: u32,
    /// Replace an existing identity; the old files are kept as .bak-<time>. Asks first on a terminal.
    #[arg(long)]
    pub force: bool,
    /// With --force: do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `certificate registration-instructions`
#[derive(Debug, Args)]
pub struct InstructionsArgs {
    /// Print the facts as one JSON object on stdout instead.
    #[arg(long)]
    pub json: bool,
}

/// `certificate register`
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The peer's certificate PEM file (as printed by its registration instructions).
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,
    /// The peer's party id; must equal its certificate's CN.
    #[arg(long, value_name = "ID")]
    pub party_id: String,
    /// The peer's IP address or DNS name.
    #[arg(long, value_name = "IP")]
    pub ip: String,
    /// The peer's TCP port (1-65535).
    #[arg(long, value_name = "PORT")]
    pub port: u64,
    /// The peer's role.
    #[arg(long, value_enum, default_value = "node")]
    pub role: RoleArg,
    /// Expected SHA-256 fingerprint, checked instead of asking (AB:CD:... as openssl prints it).
    #[arg(long, value_name = "FP")]
    pub fingerprint: Option<String>,
    /// Replace an existing registration with the same party id.
    #[arg(long)]
    pub upsert: bool,
    /// Do not ask for confirmation (you vouch for the fingerprint).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Accept a certificate outside its validity period.
    #[arg(long)]
    pub allow_expired: bool,
    /// Accept a certificate whose CN differs from --party-id.
    #[arg(long)]
    pub allow_cn_mismatch: bool,
}

/// `certificate list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `certificate delete`
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The party to remove.
    #[arg(long, value_name = "ID")]
    pub party_id: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Quantization knobs shared by `mask` and `round serve`.
#[derive(Debug, Args, Clone, Copy)]
pub struct QuantArgs {
    /// Clip bound: values are clipped to [-C, C] (clipped values are counted and reported).
    #[arg(long, value_name = "C", default_value_t = 1.0)]
    pub clip: f64,
    /// Bits per quantized value, sign included (2-32). Error per value is at most C / (2^(B-1)-1) / 2.
    #[arg(long, value_name = "B", default_value_t = 16)]
    pub bits: u32,
    /// Largest weight (sample count) any node may use; bounds the sum.
    #[arg(long, value_name = "W", default_value_t = 1_000_000)]
    pub max_weight: u64,
}

/// `secagg mask`
#[derive(Debug, Args)]
pub struct MaskArgs {
    /// The update: a .npy (f32/f64) or .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Federation id (agreed with the researcher).
    #[arg(long, value_name = "ID")]
    pub federation: String,
    /// Round number.
    #[arg(long, value_name = "N")]
    pub round: u64,
    /// Every node of the round, this one included, comma separated.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',', required = true)]
    pub participants: Vec<String>,
    /// The researcher the file is for (its certificate is bound into the masks; only it
    /// can aggregate the file). Default: the only researcher registered here.
    #[arg(long, value_name = "ID")]
    pub researcher: Option<String>,
    /// This node's weight: the number of samples it trained on.
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub weight: u64,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Label of the vector within the round.
    #[arg(long, value_name = "LABEL", default_value = "update")]
    pub label: String,
    /// Where to write the masked, signed file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `secagg round ...`
#[derive(Debug, Subcommand)]
pub enum RoundCmd {
    /// Researcher: run one secure round (protocol 2) over mutual TLS with the named nodes.
    ///
    /// Only certificates registered here with role node and named in --nodes get a
    /// connection. The round runs once, whatever drops out: double masking and
    /// t-of-n secret sharing let the researcher remove the masks of nodes that left,
    /// while it learns only the weighted mean of the nodes whose whole update arrived.
    /// Fewer than --threshold at any phase ends the round on every side, and nothing
    /// is revealed.
    Serve(ServeArgs),
    /// Node: take part in one secure round run by the registered researcher.
    ///
    /// The node checks the announced round against its own policy (the [policy] table
    /// of config.toml, overridden by the flags below) before any key is made, checks
    /// every key and set the researcher forwards against its own registry, and
    /// journals each step before the message it protects leaves.
    Join(JoinArgs),
    /// This party's past rounds, from the journal.
    List(RoundListArgs),
}

/// `round serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Federation id (any name both sides agree on, e.g. the study name). The nodes pin it.
    #[arg(long, value_name = "ID")]
    pub federation: String,
    /// Round number: above every round these nodes took part in before (they refuse
    /// anything else).
    #[arg(long, value_name = "N")]
    pub round: u64,
    /// The nodes invited, comma separated; each must be registered here as a node.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// The threshold t: how many nodes must remain at every phase. Default ⌊2n/3⌋+1;
    /// must be more than half of n. Tolerates n-t dropouts and 2t-n-1 colluding nodes.
    #[arg(long, value_name = "T")]
    pub threshold: Option<usize>,
    /// The tensors the nodes bring: a file with the model's shapes (e.g. the global
    /// model, .npy or .safetensors). Or give --shape.
    #[arg(long, value_name = "FILE", conflicts_with = "shape")]
    pub like: Option<PathBuf>,
    /// The shape of a single-tensor .npy update, e.g. 1000 or 10x100 (float32 unless
    /// --dtype f64).
    #[arg(long, value_name = "DIMS")]
    pub shape: Option<String>,
    /// Element type with --shape.
    #[arg(
        long,
        value_name = "f32|f64",
        default_value = "f32",
        requires = "shape"
    )]
    pub dtype: String,
    /// The global model this round is about: its digest is announced, and nodes given
    /// the same file with `round join --model` refuse any other.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Address to listen on. Default: this party's advertised ip and port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Seconds the invited nodes have to connect and advertise their keys.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub join_timeout: u64,
    /// Seconds each later phase may take (also the handshake deadline).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Where to write the weighted mean (.npy or .safetensors, as the nodes' updates).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary of the outcome on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `round join`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The update: a .npy (f32/f64) or .safetensors file. Checked whole before connecting.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// This node's weight: the number of samples it trained on.
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub weight: u64,
    /// The federation this node serves (else `federation` in config.toml [policy]).
    #[arg(long, value_name = "ID")]
    pub federation: Option<String>,
    /// The researcher to join. Default: the only researcher registered here.
    #[arg(long, value_name = "ID")]
    pub researcher: Option<String>,
    /// Where to write the weighted mean that comes back (same format as --input).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// The global model this node trained from: the researcher must announce the same.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Seconds the whole round may take, waiting for the researcher included.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub timeout: u64,
    /// Policy: refuse rounds with fewer invited nodes (default 3).
    #[arg(long, value_name = "N")]
    pub min_nodes: Option<usize>,
    /// Policy: refuse a threshold below this (default ⌊2n/3⌋+1; never at or below n/2).
    #[arg(long, value_name = "T")]
    pub min_threshold: Option<usize>,
    /// Policy: refuse a clip bound above this (default 100).
    #[arg(long, value_name = "C")]
    pub max_clip: Option<f64>,
    /// Policy: refuse a max weight above this (default 1000000).
    #[arg(long, value_name = "W")]
    pub max_weight: Option<u64>,
    /// Policy: always send weight 1, so sample counts cannot be learned across rounds.
    #[arg(long)]
    pub fixed_weight: bool,
    /// Policy: trusted peers (registered ids) that must be among the survivors and signers.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    pub require_peers: Vec<String>,
    /// Policy: how many of --require-peers must take part (default: all of them).
    #[arg(long, value_name = "M")]
    pub require_peers_count: Option<usize>,
    /// Print a JSON summary of the outcome on stdout.
    #[arg(long)]
    pub json: bool,
    /// Test only: pause after sending this many bytes of the masked update.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub insecure_test_stall_after_bytes: Option<u64>,
    /// Test only: how long that pause lasts.
    #[arg(long, value_name = "SECS", hide = true, default_value_t = 3600)]
    pub insecure_test_stall_secs: u64,
}

/// `round list`
#[derive(Debug, Args)]
pub struct RoundListArgs {
    /// JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `secagg aggregate`
#[derive(Debug, Args)]
pub struct AggregateArgs {
    /// One masked file per participant.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Where to write the weighted mean (same format as the nodes' inputs).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print a JSON summary of the outcome on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `secagg bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Nodes in the simulated round (masking uses nodes-1 peers).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub nodes: usize,
    /// Vector length (elements).
    #[arg(long, value_name = "D", default_value_t = 10_000_000)]
    pub len: usize,
    /// Threads for masking (default: all cores).
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}
