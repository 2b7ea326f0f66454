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

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage this party's certificate and the registry of peers.
    #[command(subcommand)]
    Certificate(CertificateCmd),
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
    /// Researcher: accept the named nodes over mutual TLS, aggregate their masked
    /// updates as they stream in, write the weighted mean and send it back.
    ///
    /// Only certificates registered here with role node and named in --nodes get a
    /// connection. If a node is lost before its update is complete, the survivors re-mask
    /// under the next attempt, as long as --min-nodes remain.
    Serve(ServeArgs),
    /// Node: connect to the registered researcher, mask this update for the announced
    /// participants, stream it, and receive the weighted mean.
    ///
    /// Only the researcher's registered certificate is accepted. Every announced
    /// participant must be registered here as a node.
    Join(JoinArgs),
}

/// `round serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Federation id (any name both sides agree on, e.g. the study name).
    #[arg(long, value_name = "ID")]
    pub federation: String,
    /// Round number. Use a new number for every round: nodes refuse to mask twice.
    #[arg(long, value_name = "N")]
    pub round: u64,
    /// The nodes invited, comma separated; each must be registered here as a node.
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Address to listen on. Default: this party's advertised ip and port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Fewest nodes an attempt may have (at least 2). Default: all named, up to 3.
    #[arg(long, value_name = "M")]
    pub min_nodes: Option<usize>,
    /// Most attempts before the round fails.
    #[arg(long, value_name = "K", default_value_t = 2)]
    pub max_attempts: u32,
    /// Seconds the nodes have to connect and join.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub join_timeout: u64,
    /// Seconds each attempt may take before silent nodes are dropped (also the limit
    /// on handshakes and sends).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Where to write the weighted mean (.npy or .safetensors, as the nodes' updates).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `round join`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The update: a .npy (f32/f64) or .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// This node's weight: the number of samples it trained on.
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub weight: u64,
    /// The researcher to join. Default: the only researcher registered here.
    #[arg(long, value_name = "ID")]
    pub researcher: Option<String>,
    /// Where to write the weighted mean that comes back (same format as --input).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Refuse attempts with fewer participants than this (at least 2).
    #[arg(long, value_name = "M", default_value_t = 3)]
    pub min_nodes: usize,
    /// Most attempts of one round this node masks for.
    #[arg(long, value_name = "K", default_value_t = 2)]
    pub max_attempts: u32,
    /// Seconds to wait for the researcher: to connect, and for each message.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// Test only: pause after sending this many bytes of the masked update.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub insecure_test_stall_after_bytes: Option<u64>,
    /// Test only: how long that pause lasts.
    #[arg(long, value_name = "SECS", hide = true, default_value_t = 3600)]
    pub insecure_test_stall_secs: u64,
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
