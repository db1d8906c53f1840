//! Calling other modules through the Core (PROTOCOL.md §10).
//!
//! A module never dials another module: it calls an interface's method on
//! its Core's endpoint, with its own certificate, and the Core checks its
//! lease and permissions, picks a provider and forwards the call. The same
//! connection serves the registry: [`CoreClient::discover`] lists the
//! providers the module may call, [`CoreClient::watch`] follows their
//! lifecycle events.
//!
//! ```no_run
//! # async fn handler() -> Result<(), Box<dyn std::error::Error>> {
//! use anima_module_sdk::CoreClient;
//! // ANIMA_CORE_ENDPOINT and ANIMA_CORE_URN come from the launching Core.
//! let core = CoreClient::from_env()?;
//! let providers = core.discover("anima.sample/kv", ">=1.0").await?;
//! // Any generated client works over the channel, e.g.
//! // KvStoreClient::new(core.channel()).get(…).await?;
//! let _channel = core.channel();
//! # let _ = providers; Ok(()) }
//! ```
//!
//! **Errors a handler passes on.** An error from a call through the Core
//! may carry an `ErrorInfo` of domain `anima` (`PROVIDER_LOST`,
//! `POLICY_DENIED`, a `LEASE_EXPIRED` of this module's own lease, …) for
//! your code to branch on. Do not answer your own caller with it as it is:
//! the Core reads an `anima` reason in a module's answer as the module
//! refusing the call's lease, and revokes that lease (PROTOCOL.md §4).
//! Answer with its code and message only, as the `notes` sample does:
//!
//! ```
//! fn passed_on(status: &tonic::Status) -> tonic::Status {
//!     tonic::Status::new(status.code(), status.message())
//! }
//! # let reason = tonic::Status::unavailable("gone");
//! # assert_eq!(passed_on(&reason).code(), tonic::Code::Unavailable);
//! ```

use anima_protocol::launch::LaunchEnv;
use anima_protocol::pb::registry_client::RegistryClient;
use anima_protocol::pb::{DiscoverRequest, Provider, RegistryWatchRequest, WatchItem};
use anima_protocol::transport::Address;
use anima_protocol::{ClientTls, PeerPolicy, TlsIdentity, TrustRoot, Urn};
use tonic::transport::Channel;

use crate::SdkError;

/// The metadata that pins a call to one provider (its URN as the value);
/// [`Provider::route`] carries it too.
pub const PIN_HEADER: &str = "anima-provider";

/// A module's client of its Core: the channel its calls to other modules'
/// interfaces go through, and the registry.
///
/// The connection is dialled on first use and dialled again when it has
/// gone away (a Core that restarted, a network cut), so one `CoreClient`
/// serves a module's whole life. Cloning shares it.
#[derive(Clone)]
pub struct CoreClient {
    addr: Address,
    core: Urn,
    channel: Channel,
}

impl std::fmt::Debug for CoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreClient")
            .field("core", &self.core)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CoreClient {
    /// A client of the Core `core` at `addr`, as `identity` (the module's
    /// own certificate), trusting `trust`.
    pub fn new(
        addr: impl Into<Address>,
        core: Urn,
        identity: TlsIdentity,
        trust: TrustRoot,
    ) -> Result<Self, SdkError> {
        let addr = addr.into();
        let channel = ClientTls::new(identity, trust)
            .reconnecting(addr.clone(), PeerPolicy::exactly(core.clone()))?;
        Ok(CoreClient {
            addr,
            core,
            channel,
        })
    }

    /// A client of the launching Core, from the launch environment
    /// (`ANIMA_CORE_ENDPOINT`, `ANIMA_CORE_URN`, `ANIMA_CERT`, `ANIMA_KEY`,
    /// `ANIMA_CA`).
    pub fn from_env() -> Result<Self, SdkError> {
        let env = LaunchEnv::from_env()?;
        let addr = env.core_endpoint.ok_or(SdkError::LaunchEnv(
            anima_protocol::launch::LaunchEnvError::Missing(
                anima_protocol::launch::ENV_CORE_ENDPOINT,
            ),
        ))?;
        let core = env.core.ok_or(SdkError::LaunchEnv(
            anima_protocol::launch::LaunchEnvError::Missing(anima_protocol::launch::ENV_CORE_URN),
        ))?;
        let identity = TlsIdentity::from_pem_files(&env.cert, &env.key)?;
        let trust = TrustRoot::from_pem_file(&env.ca)?;
        CoreClient::new(addr, core, identity, trust)
    }

    /// The Core this client calls.
    pub fn core(&self) -> &Urn {
        &self.core
    }

    /// The channel to the Core, for any generated client: a call of an
    /// interface's method on it goes to a provider the Core picks (or the
    /// one named by [`PIN_HEADER`]). Clone it freely.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The providers of `interface` with a version in `range` (semver; ""
    /// for any) that this module may call, with their state and route
    /// (P4). Only providers in state `leased` take calls now.
    pub async fn discover(
        &self,
        interface: &str,
        range: &str,
    ) -> Result<Vec<Provider>, tonic::Status> {
        let reply = self
            .registry()
            .discover(DiscoverRequest {
                interface: interface.into(),
                range: range.into(),
            })
            .await?;
        Ok(reply.into_inner().providers)
    }

    /// The lifecycle events of the providers of `interfaces`, from
    /// `since_revision` of `epoch` on (0 and "" for "from now on"; P5). A
    /// stream that breaks can be opened again with the last revision and
    /// epoch seen: nothing is missed, or it starts with a snapshot.
    pub async fn watch(
        &self,
        interfaces: &[&str],
        since_revision: u64,
        epoch: &str,
    ) -> Result<tonic::Streaming<WatchItem>, tonic::Status> {
        let reply = self
            .registry()
            .watch(RegistryWatchRequest {
                interfaces: interfaces.iter().map(|i| (*i).to_owned()).collect(),
                since_revision,
                epoch: epoch.into(),
            })
            .await?;
        Ok(reply.into_inner())
    }

    fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel())
    }
}
