//! `warren ctl`: rabbitmqctl's commands for operators, on top of the management HTTP API, so
//! that a running broker is administered with the names and arguments operators already know.
//!
//! Every command is one or a few blocking requests; tables are for people, `--json` prints the
//! API's JSON as returned, and each failure is one line with an exit code a script can branch
//! on.

mod api;
mod text;

use std::collections::BTreeSet;
use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use ureq::http::Method;

use crate::Config;
use api::{Client, Failure, Subject, segment};
use text::{cell, quoted, shell, shown, table};

/// Where the API is when nothing says otherwise: the default `management.listen`, locally.
const DEFAULT_URL: &str = "http://127.0.0.1:15672";

const EXAMPLES: &str = "\
Examples:
  warren ctl list_queues
  warren ctl list_queues -p apps name messages consumers
  warren ctl --json list_connections
  warren ctl add_vhost apps
  warren ctl add_user app s3cret
  warren ctl set_permissions -p apps app '^app\\.' '.*' '.*'
  warren ctl set_policy -p apps --apply-to queues cap '^app\\.' '{\"max-length\": 10000}'
  warren ctl export_definitions backup.json
  warren ctl --url http://broker-1:15672 --user admin status

Exit codes:
  0   done
  1   the broker refused (the message says why and what to do), or a local file failed
  2   the command line is wrong
  69  the management API cannot be reached
  77  the user or password is wrong, or the user may not do this (HTTP 401)";

/// The operator's command line: rabbitmqctl's commands, through the management API.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES, subcommand_value_name = "COMMAND")]
pub struct CtlArgs {
    /// The management API's URL [default: management.listen of --config, else $WARREN_URL,
    /// else http://127.0.0.1:15672]
    #[arg(long, global = true, value_name = "URL", conflicts_with = "config")]
    url: Option<String>,
    /// Warren's config file, to find the API at its management.listen.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// User to log in as; most commands need the administrator tag.
    // Ids of their own: a command's USER or PASSWORD argument would otherwise overwrite them.
    #[arg(
        id = "login_user",
        long = "user",
        global = true,
        env = "WARREN_USER",
        default_value = "guest",
        value_name = "USER"
    )]
    user: String,
    /// That user's password.
    #[arg(
        id = "login_password",
        long = "password",
        global = true,
        env = "WARREN_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    password: String,
    /// Seconds to wait for the broker's answer.
    #[arg(
        long,
        short,
        global = true,
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    timeout: u64,
    /// Print the API's JSON as returned, instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Print no header row above tables and no confirmation of changes.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// The vhost a command works in.
#[derive(Debug, Args)]
struct Vhost {
    /// The vhost.
    #[arg(short = 'p', long = "vhost", value_name = "VHOST", default_value = "/")]
    vhost: String,
}

/// The columns of a listing.
#[derive(Debug, Args)]
struct Columns {
    /// Fields to show, in this order [default: the command's usual ones]. A dotted path picks
    /// a nested field (arguments.x-max-length); rabbitmqctl's names work too.
    #[arg(value_name = "COLUMN")]
    columns: Vec<String>,
}

/// A listing of one vhost's objects.
#[derive(Debug, Args)]
struct VhostColumns {
    #[command(flatten)]
    vhost: Vhost,
    #[command(flatten)]
    columns: Columns,
}

// rabbitmqctl's command names are snake_case; the flags inside stay kebab-case.
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Command {
    /// List the queues of a vhost and their messages [columns: name messages].
    ///
    /// Columns are the fields of the API's queues: name, vhost, type, durable, auto_delete,
    /// exclusive, arguments, state, consumers, messages, messages_ready,
    /// messages_unacknowledged, message_bytes, policy.
    #[command(
        after_long_help = "Examples:\n  warren ctl list_queues\n  warren ctl list_queues -p apps name type messages consumers\n  warren ctl list_queues name arguments.x-max-length\n  warren ctl --json list_queues -p apps"
    )]
    ListQueues(VhostColumns),
    /// List the exchanges of a vhost [columns: name type].
    ///
    /// Columns are the fields of the API's exchanges: name, vhost, type, durable, auto_delete,
    /// internal, arguments, policy. The default exchange's name is empty.
    #[command(after_long_help = "Example:\n  warren ctl list_exchanges -p apps name type durable")]
    ListExchanges(VhostColumns),
    /// List the bindings of a vhost [columns: source_name destination_name destination_kind
    /// routing_key arguments].
    ///
    /// Columns are the fields of the API's bindings: source, destination, destination_type,
    /// routing_key, arguments, properties_key, vhost; rabbitmqctl's source_name,
    /// destination_name and destination_kind name the first three.
    #[command(
        after_long_help = "Example:\n  warren ctl list_bindings -p apps source destination routing_key"
    )]
    ListBindings(VhostColumns),
    /// List client connections [columns: name user peer_host peer_port state].
    ///
    /// Columns are the fields of the API's connections: name (what close_connection takes),
    /// user, vhost, peer_host, peer_port, state, channels, protocol, client_properties,
    /// connected_at, timeout, frame_max.
    #[command(
        after_long_help = "Examples:\n  warren ctl list_connections\n  warren ctl list_connections name vhost client_properties.connection_name"
    )]
    ListConnections(Columns),
    /// List channels [columns: name user consumer_count messages_unacknowledged].
    ///
    /// Warren's API does not track channels yet, so the list is empty.
    ListChannels(Columns),
    /// List the consumers of a vhost [columns: queue_name channel_pid consumer_tag
    /// ack_required prefetch_count active arguments].
    ///
    /// Warren's API does not track consumers yet, so the list is empty; list_queues shows
    /// each queue's consumer count.
    ListConsumers(VhostColumns),
    /// List users and their tags [columns: user tags].
    ///
    /// Columns are the fields of the API's users: name (rabbitmqctl's user), tags,
    /// hashing_algorithm, password_hash, limits.
    ListUsers(Columns),
    /// List vhosts [columns: name].
    ///
    /// Columns are the fields of the API's vhosts: name, description, tags,
    /// default_queue_type.
    #[command(after_long_help = "Example:\n  warren ctl list_vhosts name description tags")]
    ListVhosts(Columns),
    /// List the users' permissions in a vhost [columns: user configure write read].
    ListPermissions(VhostColumns),
    /// List the policies of a vhost [columns: vhost name pattern apply-to definition
    /// priority].
    ListPolicies(VhostColumns),
    /// Add a user (with no tags and no permissions: see set_user_tags and set_permissions).
    #[command(
        after_long_help = "Examples:\n  warren ctl add_user app s3cret\n  printf '%s\\n' \"$PASSWORD\" | warren ctl add_user app"
    )]
    AddUser {
        /// The user's name.
        name: String,
        /// Their password; left out, it is read from the first line of standard input (which
        /// keeps it out of the process list and the shell's history).
        password: Option<String>,
    },
    /// Delete a user, their permissions, and close their connections.
    DeleteUser {
        /// The user's name.
        name: String,
    },
    /// Change a user's password (their tags stay).
    ChangePassword {
        /// The user's name.
        name: String,
        /// The new password; left out, it is read from the first line of standard input.
        password: Option<String>,
    },
    /// Set a user's tags, replacing the ones they have; no tag clears them.
    ///
    /// Tags decide what the user may do through the management API: management,
    /// policymaker, monitoring, administrator.
    #[command(
        after_long_help = "Examples:\n  warren ctl set_user_tags admin administrator\n  warren ctl set_user_tags app"
    )]
    SetUserTags {
        /// The user's name.
        name: String,
        /// The tags.
        #[arg(value_name = "TAG")]
        tags: Vec<String>,
    },
    /// Add a vhost; the user running the command gets every permission in it.
    #[command(
        after_long_help = "Example:\n  warren ctl add_vhost apps --description 'the apps' --default-queue-type quorum"
    )]
    AddVhost {
        /// The vhost's name.
        name: String,
        /// A description, shown by list_vhosts.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Comma-separated tags.
        #[arg(long, value_name = "TAGS")]
        tags: Option<String>,
        /// The type of queues declared without x-queue-type.
        #[arg(
            long = "default-queue-type",
            value_name = "TYPE",
            value_parser = ["classic", "quorum", "stream"]
        )]
        default_queue_type: Option<String>,
    },
    /// Delete a vhost with everything in it, and close its connections.
    DeleteVhost {
        /// The vhost's name.
        name: String,
    },
    /// Set a user's permissions in a vhost, as three regular expressions of resource names.
    ///
    /// CONF matches the queues and exchanges the user may declare and delete, WRITE those
    /// they may publish and bind to, READ those they may consume, get and bind from. '.*'
    /// matches everything, '' nothing.
    #[command(
        after_long_help = "Examples:\n  warren ctl set_permissions -p apps app '.*' '.*' '.*'\n  warren ctl set_permissions -p apps reader '' '' '^reports\\.'"
    )]
    SetPermissions {
        #[command(flatten)]
        vhost: Vhost,
        /// The user.
        user: String,
        /// What the user may configure.
        conf: String,
        /// What the user may write to.
        write: String,
        /// What the user may read from.
        read: String,
    },
    /// Clear a user's permissions in a vhost (their open connections stay open).
    ClearPermissions {
        #[command(flatten)]
        vhost: Vhost,
        /// The user.
        user: String,
    },
    /// Set a policy: a definition applied to the queues or exchanges whose names match.
    ///
    /// Warren validates and stores policies but does not apply them to queues yet: set the
    /// same settings as queue arguments for now.
    #[command(
        after_long_help = "Example:\n  warren ctl set_policy -p apps --apply-to queues --priority 1 cap '^app\\.' '{\"max-length\": 10000, \"overflow\": \"reject-publish\"}'"
    )]
    SetPolicy {
        #[command(flatten)]
        vhost: Vhost,
        /// Which policy wins where several match: the highest.
        #[arg(long, default_value_t = 0, value_name = "N")]
        priority: i64,
        /// What the policy applies to: queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all", value_name = "KIND")]
        apply_to: String,
        /// The policy's name.
        name: String,
        /// A regular expression of the names it applies to.
        pattern: String,
        /// The definition, a JSON object.
        #[arg(value_name = "DEFINITION", value_parser = json_object)]
        definition: Map<String, Value>,
    },
    /// Clear (delete) a policy.
    ClearPolicy {
        #[command(flatten)]
        vhost: Vhost,
        /// The policy's name.
        name: String,
    },
    /// Remove every ready message from a queue.
    PurgeQueue {
        #[command(flatten)]
        vhost: Vhost,
        /// The queue's name.
        queue: String,
    },
    /// Delete a queue and its messages.
    DeleteQueue {
        #[command(flatten)]
        vhost: Vhost,
        /// Only if it has no messages.
        #[arg(long = "if-empty", short = 'e')]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(long = "if-unused", short = 'u')]
        if_unused: bool,
        /// The queue's name.
        queue: String,
    },
    /// Close a client connection; the client is told 320 CONNECTION_FORCED and why.
    #[command(
        after_long_help = "Example:\n  warren ctl list_connections name user\n  warren ctl close_connection '127.0.0.1:53412 -> 127.0.0.1:5672' 'maintenance, reconnect in 5 minutes'"
    )]
    CloseConnection {
        /// The connection's name, as list_connections shows it.
        name: String,
        /// Why, for the client (printable ASCII: it travels in an HTTP header).
        explanation: String,
    },
    /// Write every user, vhost, permission, policy, queue, exchange and binding to a file, in
    /// RabbitMQ's format.
    ///
    /// Users come with their password hashes, so keep the file safe.
    #[command(
        after_long_help = "Examples:\n  warren ctl export_definitions backup.json\n  warren ctl export_definitions - | jq .queues"
    )]
    ExportDefinitions {
        /// The file to write, or - for standard output.
        file: PathBuf,
    },
    /// Import definitions from a file: Warren's export or RabbitMQ 3.x's, unchanged.
    ///
    /// The whole file is checked before anything is applied: a bad file changes nothing.
    ImportDefinitions {
        /// The file to read, or - for standard input.
        file: PathBuf,
    },
    /// Show the node: version, uptime, listeners, memory, alarms and object counts.
    Status,
}

/// A listing: where the API has it, and how rabbitmqctl shows it.
struct Listing {
    /// The objects, for messages.
    objects: &'static str,
    /// The API path; `{vhost}` stands for the vhost.
    path: &'static str,
    /// The columns shown when none are asked for (rabbitmqctl's).
    defaults: &'static [&'static str],
    /// rabbitmqctl's names of fields that the API names otherwise.
    aliases: &'static [(&'static str, &'static str)],
}

impl Listing {
    /// The API's (dotted) field for a column.
    fn field<'a>(&self, column: &'a str) -> &'a str {
        self.aliases
            .iter()
            .find(|(alias, _)| *alias == column)
            .map_or(column, |(_, field)| field)
    }
}

const QUEUES: Listing = Listing {
    objects: "queues",
    path: "/queues/{vhost}",
    defaults: &["name", "messages"],
    aliases: &[],
};
const EXCHANGES: Listing = Listing {
    objects: "exchanges",
    path: "/exchanges/{vhost}",
    defaults: &["name", "type"],
    aliases: &[],
};
const BINDINGS: Listing = Listing {
    objects: "bindings",
    path: "/bindings/{vhost}",
    defaults: &[
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
    ],
    aliases: &[
        ("source_name", "source"),
        ("destination_name", "destination"),
        ("destination_kind", "destination_type"),
    ],
};
const CONNECTIONS: Listing = Listing {
    objects: "connections",
    path: "/connections",
    defaults: &["name", "user", "peer_host", "peer_port", "state"],
    aliases: &[],
};
const CHANNELS: Listing = Listing {
    objects: "channels",
    path: "/channels",
    defaults: &["name", "user", "consumer_count", "messages_unacknowledged"],
    aliases: &[("pid", "name")],
};
const CONSUMERS: Listing = Listing {
    objects: "consumers",
    path: "/consumers/{vhost}",
    defaults: &[
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "active",
        "arguments",
    ],
    aliases: &[
        ("queue_name", "queue.name"),
        ("channel_pid", "channel_details.name"),
    ],
};
const USERS: Listing = Listing {
    objects: "users",
    path: "/users",
    defaults: &["user", "tags"],
    aliases: &[("user", "name")],
};
const VHOSTS: Listing = Listing {
    objects: "vhosts",
    path: "/vhosts",
    defaults: &["name"],
    aliases: &[],
};
const PERMISSIONS: Listing = Listing {
    objects: "permissions",
    path: "/vhosts/{vhost}/permissions",
    defaults: &["user", "configure", "write", "read"],
    aliases: &[],
};
const POLICIES: Listing = Listing {
    objects: "policies",
    path: "/policies/{vhost}",
    defaults: &[
        "vhost",
        "name",
        "pattern",
        "apply-to",
        "definition",
        "priority",
    ],
    aliases: &[],
};

/// Runs `warren ctl`: prints the result on stdout or one line on stderr, and says how it went.
pub fn run(args: &CtlArgs) -> ExitCode {
    match execute(args) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // A reader that stopped early (`| head`) had what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warren ctl: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(f) => {
            eprintln!("warren ctl: {}", f.message());
            ExitCode::from(f.exit_code())
        }
    }
}

fn execute(args: &CtlArgs) -> Result<Vec<u8>, Failure> {
    let url = match (&args.url, &args.config) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => {
            let config = Config::load(file).map_err(Failure::Usage)?;
            if !config.management.enabled {
                return Err(Failure::Usage(format!(
                    "{} turns the management API off (management.enabled = false)",
                    file.display()
                )));
            }
            local_url(config.management.listen)
        }
        (None, None) => std::env::var("WARREN_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned()),
    };
    let ctl = Ctl {
        client: Client::new(
            &url,
            &args.user,
            &args.password,
            Duration::from_secs(args.timeout),
        )?,
        json: args.json,
        quiet: args.quiet,
    };
    ctl.execute(&args.command)
}

/// The URL to reach an API listening on `listen` from this machine.
fn local_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// A policy definition from the command line.
fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object; e.g. '{\"max-length\": 1000}'".into()),
        Err(e) => Err(format!("not JSON ({e}); e.g. '{{\"max-length\": 1000}}'")),
    }
}

/// A password from the command line, or else the first line of standard input.
fn password(given: Option<&String>) -> Result<String, Failure> {
    let password = match given {
        Some(p) => p.clone(),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("Password: ");
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| Failure::Local(format!("cannot read the password: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(Failure::Usage(
            "the password is empty: give it as an argument or as the first line of standard input"
                .into(),
        ));
    }
    Ok(password)
}

/// A command's context: the API, and how to print.
struct Ctl {
    client: Client,
    json: bool,
    quiet: bool,
}

impl Ctl {
    fn execute(&self, command: &Command) -> Result<Vec<u8>, Failure> {
        match command {
            Command::ListQueues(a) => self.list(&QUEUES, Some(&a.vhost.vhost), &a.columns),
            Command::ListExchanges(a) => self.list(&EXCHANGES, Some(&a.vhost.vhost), &a.columns),
            Command::ListBindings(a) => self.list(&BINDINGS, Some(&a.vhost.vhost), &a.columns),
            Command::ListConnections(c) => self.list(&CONNECTIONS, None, c),
            Command::ListChannels(c) => self.list(&CHANNELS, None, c),
            Command::ListConsumers(a) => self.list(&CONSUMERS, Some(&a.vhost.vhost), &a.columns),
            Command::ListUsers(c) => self.list(&USERS, None, c),
            Command::ListVhosts(c) => self.list(&VHOSTS, None, c),
            Command::ListPermissions(a) => {
                self.list(&PERMISSIONS, Some(&a.vhost.vhost), &a.columns)
            }
            Command::ListPolicies(a) => self.list(&POLICIES, Some(&a.vhost.vhost), &a.columns),
            Command::AddUser { name, password: p } => self.add_user(name, &password(p.as_ref())?),
            Command::DeleteUser { name } => {
                let doing = format!("cannot delete user {}", quoted(name));
                let path = format!("/users/{}", segment(name));
                self.change(Method::DELETE, &path, None, &doing, Subject::User(name))?;
                Ok(self.done(&format!("Deleted user {}", quoted(name))))
            }
            Command::ChangePassword { name, password: p } => {
                self.change_password(name, &password(p.as_ref())?)
            }
            Command::SetUserTags { name, tags } => self.set_user_tags(name, tags),
            Command::AddVhost {
                name,
                description,
                tags,
                default_queue_type,
            } => {
                let mut body = Map::new();
                let fields = [
                    ("description", description),
                    ("tags", tags),
                    ("default_queue_type", default_queue_type),
                ];
                for (key, value) in fields {
                    if let Some(v) = value {
                        body.insert(key.into(), Value::from(v.as_str()));
                    }
                }
                self.add_vhost(name, body)
            }
            Command::DeleteVhost { name } => {
                let doing = format!("cannot delete vhost {}", quoted(name));
                let path = format!("/vhosts/{}", segment(name));
                self.change(Method::DELETE, &path, None, &doing, Subject::Vhost(name))?;
                Ok(self.done(&format!("Deleted vhost {}", quoted(name))))
            }
            Command::SetPermissions {
                vhost: Vhost { vhost },
                user,
                conf,
                write,
                read,
            } => {
                let doing = format!(
                    "cannot set the permissions of user {} in vhost {}",
                    quoted(user),
                    quoted(vhost)
                );
                let body = json!({"configure": conf, "write": write, "read": read});
                let subject = Subject::Permissions { vhost, user };
                self.change(
                    Method::PUT,
                    &permissions_path(vhost, user),
                    Some(body),
                    &doing,
                    subject,
                )?;
                Ok(self.done(&format!(
                    "Set the permissions of user {} in vhost {}",
                    quoted(user),
                    quoted(vhost)
                )))
            }
            Command::ClearPermissions {
                vhost: Vhost { vhost },
                user,
            } => {
                let doing = format!(
                    "cannot clear the permissions of user {} in vhost {}",
                    quoted(user),
                    quoted(vhost)
                );
                let subject = Subject::Permissions { vhost, user };
                let path = permissions_path(vhost, user);
                self.change(Method::DELETE, &path, None, &doing, subject)?;
                Ok(self.done(&format!(
                    "Cleared the permissions of user {} in vhost {}",
                    quoted(user),
                    quoted(vhost)
                )))
            }
            Command::SetPolicy {
                vhost: Vhost { vhost },
                priority,
                apply_to,
                name,
                pattern,
                definition,
            } => {
                let doing = format!(
                    "cannot set policy {} in vhost {}",
                    quoted(name),
                    quoted(vhost)
                );
                let body = json!({
                    "pattern": pattern,
                    "definition": definition,
                    "priority": priority,
                    "apply-to": apply_to,
                });
                let subject = policy(vhost, name);
                self.change(
                    Method::PUT,
                    &policy_path(vhost, name),
                    Some(body),
                    &doing,
                    subject,
                )?;
                Ok(self.done(&format!(
                    "Set policy {} in vhost {}",
                    quoted(name),
                    quoted(vhost)
                )))
            }
            Command::ClearPolicy {
                vhost: Vhost { vhost },
                name,
            } => {
                let doing = format!(
                    "cannot clear policy {} in vhost {}",
                    quoted(name),
                    quoted(vhost)
                );
                let path = policy_path(vhost, name);
                self.change(Method::DELETE, &path, None, &doing, policy(vhost, name))?;
                Ok(self.done(&format!(
                    "Cleared policy {} in vhost {}",
                    quoted(name),
                    quoted(vhost)
                )))
            }
            Command::PurgeQueue {
                vhost: Vhost { vhost },
                queue,
            } => {
                let doing = format!(
                    "cannot purge queue {} in vhost {}",
                    quoted(queue),
                    quoted(vhost)
                );
                let path = format!("{}/contents", queue_path(vhost, queue));
                self.change(Method::DELETE, &path, None, &doing, the_queue(vhost, queue))?;
                Ok(self.done(&format!(
                    "Purged queue {} in vhost {}",
                    quoted(queue),
                    quoted(vhost)
                )))
            }
            Command::DeleteQueue {
                vhost: Vhost { vhost },
                if_empty,
                if_unused,
                queue,
            } => {
                let doing = format!(
                    "cannot delete queue {} in vhost {}",
                    quoted(queue),
                    quoted(vhost)
                );
                let mut conditions = Vec::new();
                if *if_empty {
                    conditions.push("if-empty=true");
                }
                if *if_unused {
                    conditions.push("if-unused=true");
                }
                let mut path = queue_path(vhost, queue);
                if !conditions.is_empty() {
                    path = format!("{path}?{}", conditions.join("&"));
                }
                self.change(Method::DELETE, &path, None, &doing, the_queue(vhost, queue))?;
                Ok(self.done(&format!(
                    "Deleted queue {} in vhost {}",
                    quoted(queue),
                    quoted(vhost)
                )))
            }
            Command::CloseConnection { name, explanation } => {
                self.close_connection(name, explanation)
            }
            Command::ExportDefinitions { file } => self.export_definitions(file),
            Command::ImportDefinitions { file } => self.import_definitions(file),
            Command::Status => self.status(),
        }
    }

    /// A confirmation of a change, for people.
    fn done(&self, what: &str) -> Vec<u8> {
        if self.quiet || self.json {
            Vec::new()
        } else {
            format!("{what}\n").into_bytes()
        }
    }

    /// A request that changes something and answers with no body.
    fn change(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        doing: &str,
        subject: Subject<'_>,
    ) -> Result<(), Failure> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.client
            .call(method, path, body, doing, Some(subject))
            .map(drop)
    }

    fn list(
        &self,
        listing: &Listing,
        vhost: Option<&str>,
        asked: &Columns,
    ) -> Result<Vec<u8>, Failure> {
        let (path, doing) = match vhost {
            Some(v) => (
                listing.path.replace("{vhost}", &segment(v)),
                format!("cannot list the {} of vhost {}", listing.objects, quoted(v)),
            ),
            None => (
                listing.path.to_owned(),
                format!("cannot list {}", listing.objects),
            ),
        };
        let subject = vhost.map(Subject::Vhost);
        let columns: Vec<String> = if asked.columns.is_empty() {
            listing.defaults.iter().map(|c| (*c).to_owned()).collect()
        } else {
            asked.columns.clone()
        };
        let fields: Vec<&str> = columns.iter().map(|c| listing.field(c)).collect();
        if self.json {
            let query = if asked.columns.is_empty() {
                String::new()
            } else {
                format!("?columns={}", segment(&fields.join(",")))
            };
            let path = format!("{path}{query}");
            let body = self
                .client
                .call(Method::GET, &path, None, &doing, subject)?;
            return Ok(with_newline(body));
        }
        let answer = self.client.get_json(&path, &doing, subject)?;
        let items = answer.as_array().map(Vec::as_slice).unwrap_or_default();
        let known: BTreeSet<&str> = items
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|o| o.keys().map(String::as_str))
            .collect();
        if !known.is_empty()
            && let Some((column, _)) = columns
                .iter()
                .zip(&fields)
                .find(|(_, f)| !known.contains(f.split('.').next().unwrap_or_default()))
        {
            return Err(Failure::Usage(format!(
                "no column {} in the API's {}; there are: {}",
                quoted(column),
                listing.objects,
                known.into_iter().collect::<Vec<_>>().join(" ")
            )));
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|item| {
                fields
                    .iter()
                    .map(|f| cell(f.split('.').try_fold(item, |v, k| v.get(k))))
                    .collect()
            })
            .collect();
        Ok(table(&columns, &rows, self.quiet).into_bytes())
    }

    fn add_user(&self, name: &str, password: &str) -> Result<Vec<u8>, Failure> {
        let doing = format!("cannot add user {}", quoted(name));
        let path = format!("/users/{}", segment(name));
        if self.client.exists(&path, &doing)? {
            return Err(Failure::Refused {
                status: 409,
                message: format!(
                    "{doing}: user_already_exists (change their password with `warren ctl change_password {}`)",
                    shell(name)
                ),
            });
        }
        let body = json!({"password": password, "tags": ""});
        self.change(Method::PUT, &path, Some(body), &doing, Subject::User(name))?;
        Ok(self.done(&format!("Added user {}", quoted(name))))
    }

    /// A user as the API shows them, to change one thing and keep the rest.
    fn user(&self, name: &str, doing: &str) -> Result<Map<String, Value>, Failure> {
        let path = format!("/users/{}", segment(name));
        match self
            .client
            .get_json(&path, doing, Some(Subject::User(name)))?
        {
            Value::Object(user) => Ok(user),
            other => Err(Failure::Unreachable(format!(
                "{doing}: the API answered {} for the user, not an object",
                shown(&other.to_string())
            ))),
        }
    }

    fn change_password(&self, name: &str, password: &str) -> Result<Vec<u8>, Failure> {
        let doing = format!("cannot change the password of user {}", quoted(name));
        let user = self.user(name, &doing)?;
        let body = json!({
            "password": password,
            "tags": user.get("tags"),
            "hashing_algorithm": user.get("hashing_algorithm"),
        });
        let path = format!("/users/{}", segment(name));
        self.change(Method::PUT, &path, Some(body), &doing, Subject::User(name))?;
        Ok(self.done(&format!("Changed the password of user {}", quoted(name))))
    }

    fn set_user_tags(&self, name: &str, tags: &[String]) -> Result<Vec<u8>, Failure> {
        let doing = format!("cannot set the tags of user {}", quoted(name));
        let user = self.user(name, &doing)?;
        // The API replaces the whole user: their hash goes back so that the password stays.
        let body = json!({
            "password_hash": user.get("password_hash"),
            "hashing_algorithm": user.get("hashing_algorithm"),
            "tags": tags,
        });
        let path = format!("/users/{}", segment(name));
        self.change(Method::PUT, &path, Some(body), &doing, Subject::User(name))?;
        Ok(self.done(&format!(
            "Set the tags of user {} to {}",
            quoted(name),
            cell(Some(&json!(tags)))
        )))
    }

    fn add_vhost(&self, name: &str, body: Map<String, Value>) -> Result<Vec<u8>, Failure> {
        let doing = format!("cannot add vhost {}", quoted(name));
        let path = format!("/vhosts/{}", segment(name));
        if self.client.exists(&path, &doing)? {
            return Err(Failure::Refused {
                status: 409,
                message: format!(
                    "{doing}: vhost_already_exists (list vhosts with `warren ctl list_vhosts name description`)"
                ),
            });
        }
        let body = Some(Value::Object(body));
        self.change(Method::PUT, &path, body, &doing, Subject::Vhost(name))?;
        Ok(self.done(&format!("Added vhost {}", quoted(name))))
    }

    fn close_connection(&self, name: &str, explanation: &str) -> Result<Vec<u8>, Failure> {
        if !explanation
            .chars()
            .all(|c| c == ' ' || c.is_ascii_graphic())
        {
            return Err(Failure::Usage(
                "the explanation must be printable ASCII: it travels in an HTTP header".into(),
            ));
        }
        let doing = format!("cannot close connection {}", quoted(name));
        let path = format!("/connections/{}", segment(name));
        let answer = self
            .client
            .send(Method::DELETE, &path, None, Some(explanation))?;
        self.client
            .check(answer, &doing, Some(Subject::Connection(name)))?;
        Ok(self.done(&format!("Closed connection {}", quoted(name))))
    }

    fn export_definitions(&self, file: &std::path::Path) -> Result<Vec<u8>, Failure> {
        let doing = "cannot export definitions";
        let body = self
            .client
            .call(Method::GET, "/definitions", None, doing, None)?;
        if file.as_os_str() == "-" {
            return Ok(with_newline(body));
        }
        std::fs::write(file, with_newline(body))
            .map_err(|e| Failure::Local(format!("cannot write {}: {e}", file.display())))?;
        Ok(self.done(&format!("Exported definitions to {}", file.display())))
    }

    fn import_definitions(&self, file: &std::path::Path) -> Result<Vec<u8>, Failure> {
        let from_stdin = file.as_os_str() == "-";
        let name = if from_stdin {
            "standard input".to_owned()
        } else {
            file.display().to_string()
        };
        let mut body = Vec::new();
        let read = if from_stdin {
            std::io::stdin().lock().read_to_end(&mut body).map(drop)
        } else {
            std::fs::read(file).map(|b| body = b)
        };
        read.map_err(|e| Failure::Local(format!("cannot read {name}: {e}")))?;
        if let Err(e) = serde_json::from_slice::<Value>(&body) {
            return Err(Failure::Local(format!(
                "cannot import {name}: not JSON ({e})"
            )));
        }
        let doing = format!("cannot import definitions from {name}");
        self.client
            .call(Method::POST, "/definitions", Some(body), &doing, None)?;
        Ok(self.done(&format!("Imported definitions from {name}")))
    }

    fn status(&self) -> Result<Vec<u8>, Failure> {
        let doing = "cannot read the node's status";
        let overview = self.client.get_json("/overview", doing, None)?;
        let node_name = overview["node"].as_str().unwrap_or_default();
        let node = self
            .client
            .get_json(&format!("/nodes/{}", segment(node_name)), doing, None)?;
        if self.json {
            let both = json!({"overview": overview, "node": node});
            return Ok(with_newline(both.to_string().into_bytes()));
        }
        let text = |v: &Value| cell(Some(v));
        let count = |key: &str| text(&overview["object_totals"][key]);
        let listeners: Vec<String> = overview["listeners"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|l| {
                format!(
                    "{} {}:{}",
                    text(&l["protocol"]),
                    text(&l["ip_address"]),
                    text(&l["port"])
                )
            })
            .collect();
        let alarm = |key: &str| if node[key] == true { "RAISED" } else { "no" };
        let totals = &overview["queue_totals"];
        let rows: Vec<[String; 2]> = vec![
            ["Node".into(), shown(node_name)],
            [
                "Product".into(),
                format!(
                    "{} {} (RabbitMQ {} API)",
                    text(&overview["product_name"]),
                    text(&overview["product_version"]),
                    text(&overview["rabbitmq_version"])
                ),
            ],
            ["Uptime".into(), duration(node["uptime"].as_u64())],
            ["OS process".into(), text(&node["os_pid"])],
            ["Listeners".into(), listeners.join(", ")],
            [
                "Memory".into(),
                format!(
                    "{} used, budget {}",
                    bytes(node["mem_used"].as_u64()),
                    bytes(node["mem_limit"].as_u64())
                ),
            ],
            ["Memory alarm".into(), alarm("mem_alarm").into()],
            [
                "Disk free limit".into(),
                bytes(node["disk_free_limit"].as_u64()),
            ],
            ["Disk alarm".into(), alarm("disk_free_alarm").into()],
            ["Connections".into(), count("connections")],
            ["Channels".into(), count("channels")],
            ["Queues".into(), count("queues")],
            ["Exchanges".into(), count("exchanges")],
            ["Consumers".into(), count("consumers")],
            [
                "Messages".into(),
                format!(
                    "{} ({} ready, {} unacknowledged)",
                    text(&totals["messages"]),
                    text(&totals["messages_ready"]),
                    text(&totals["messages_unacknowledged"])
                ),
            ],
        ];
        let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
        Ok(table(&[], &rows, true).into_bytes())
    }
}

fn permissions_path(vhost: &str, user: &str) -> String {
    format!("/permissions/{}/{}", segment(vhost), segment(user))
}

fn policy_path(vhost: &str, name: &str) -> String {
    format!("/policies/{}/{}", segment(vhost), segment(name))
}

fn queue_path(vhost: &str, queue: &str) -> String {
    format!("/queues/{}/{}", segment(vhost), segment(queue))
}

fn policy<'a>(vhost: &'a str, name: &'a str) -> Subject<'a> {
    Subject::InVhost {
        vhost,
        kind: "policy",
        name,
        listing: "list_policies",
    }
}

fn the_queue<'a>(vhost: &'a str, name: &'a str) -> Subject<'a> {
    Subject::InVhost {
        vhost,
        kind: "queue",
        name,
        listing: "list_queues",
    }
}

/// `body` ending in a newline, as a terminal and a text file expect.
fn with_newline(mut body: Vec<u8>) -> Vec<u8> {
    if body.last() != Some(&b'\n') {
        body.push(b'\n');
    }
    body
}

/// Milliseconds as days, hours, minutes and seconds.
fn duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return String::new();
    };
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// A byte count in binary units, one decimal.
fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return String::new();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_named_like_the_login_do_not_replace_it() {
        let parse = |args: &[&str]| {
            let login = ["ctl", "--user", "admin", "--password", "secret"];
            Cli::try_parse_from(login.iter().chain(args)).expect("a valid command line")
        };
        let cli = parse(&["set_permissions", "app", ".*", ".*", ".*"]);
        assert_eq!(cli.ctl.user, "admin");
        let cli = parse(&["add_user", "app", "pw"]);
        assert_eq!(cli.ctl.password, "secret");
        assert!(matches!(cli.ctl.command, Command::AddUser { password: Some(p), .. } if p == "pw"));
    }

    #[test]
    fn listen_addresses_are_reached_locally() {
        assert_eq!(
            local_url("0.0.0.0:15672".parse().expect("an address")),
            "http://127.0.0.1:15672"
        );
        assert_eq!(
            local_url("[::]:8080".parse().expect("an address")),
            "http://[::1]:8080"
        );
        assert_eq!(
            local_url("10.0.0.5:15672".parse().expect("an address")),
            "http://10.0.0.5:15672"
        );
    }

    #[test]
    fn rabbitmqctl_column_names_map_to_the_apis() {
        assert_eq!(BINDINGS.field("source_name"), "source");
        assert_eq!(CONSUMERS.field("queue_name"), "queue.name");
        assert_eq!(USERS.field("user"), "name");
        assert_eq!(QUEUES.field("messages"), "messages");
    }

    #[test]
    fn policy_definitions_must_be_objects() {
        assert!(json_object(r#"{"max-length": 1}"#).is_ok());
        assert!(json_object("[1]").is_err());
        assert!(json_object("{max-length: 1}").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration(Some(59_999)), "59s");
        assert_eq!(duration(Some(3_723_000)), "1h 2m 3s");
        assert_eq!(duration(Some(90_061_000)), "1d 1h 1m 1s");
        assert_eq!(bytes(Some(512)), "512 B");
        assert_eq!(bytes(Some(50_000_000)), "47.7 MiB");
    }
}
