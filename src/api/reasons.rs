//! Condition types and the enum reasons each condition may carry: the vocabulary users see in
//! `kubectl get`/`describe` and that the README's reference lists.

macro_rules! names {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String { value.as_str().to_string() }
        }
    };
}

names! {
    /// Condition types of all three kinds.
    pub enum ConditionType {
        /// Summary condition of every kind.
        Ready,
        /// Vault: both storage locations answer and accept writes.
        StorageReachable,
        /// Vault: cache and target are separated as `spec.redundancy` requires.
        Separated,
        /// Workload: an agent is registered on every node that holds a protected volume.
        Registered,
        /// Workload: recovery points are being taken and replicated.
        Replicating,
        /// Workload: a recovery point exists in the target location.
        Protected,
        /// Workload: the recovery point objective is met.
        RPOMet,
        /// Failover: the workload runs in the target zone.
        FailedOver,
        /// Failover: the failover is committed.
        Committed,
        /// Failover (Test mode): the drill's copy is Ready and its verification Job succeeded.
        Verified,
        /// Workload: another cluster failed the workload over and fenced this one out of the
        /// vault's target location: no point of it is written there.
        Fenced,
    }
}

names! {
    /// Reasons of RecoveryVault conditions.
    pub enum VaultReason {
        VaultReady,
        InvalidSpec,
        StorageReachable,
        StorageUnreachable,
        SecretNotFound,
        /// The encryption key is the examples' placeholder: a vault is never opened with it.
        PlaceholderKey,
        ClaimNotFound,
        ClaimNotBound,
        SameStorageLocation,
        Separated,
        SameZone,
        SameRegion,
        ZoneNotFound,
        RegionUnknown,
        NotSeparated,
        StorageNotReady,
    }
}

names! {
    /// Reasons of ReplicatedWorkload conditions.
    pub enum WorkloadReason {
        WorkloadReady,
        /// The spec (or the name) cannot take effect; the message names the field.
        InvalidSpec,
        VaultNotFound,
        VaultNotReady,
        WorkloadNotFound,
        NoPods,
        PodNotScheduled,
        ClaimNotFound,
        NoVolumes,
        NodeNotFound,
        NoAgentOnNode,
        AgentLost,
        AgentsRegistered,
        NotRegistered,
        ReplicationNotStarted,
        /// A Failover of the workload has started: replication stops (re-protection is separate).
        FailoverInProgress,
        /// A Failover of the workload is committed: it runs in the target zone, unprotected.
        FailoverCommitted,
        /// A point is being captured or replicated now.
        PointInProgress,
        /// The last point was captured and replicated.
        PointReplicated,
        /// The last point could not be captured (an agent's error, a timeout).
        CaptureFailed,
        /// The agents' reports of the last point stopped moving: it was given up.
        CaptureStalled,
        /// The last point is in the cache but could not be copied to the target.
        ReplicationFailed,
        /// A pre or post hook failed: the point carries the consistency it really has.
        HookFailed,
        /// `spec.appConsistency.freezeFilesystems` is asked for with the vault's `Live` capture:
        /// a freeze around a read that takes seconds would stall the application, so none is
        /// done and the points stay FileLevel; a `CSI` vault freezes for the snapshot instant.
        FreezeNeedsSnapshots,
        /// A location holds a repository this vault's key does not open, or another one.
        RepositoryRefused,
        /// Another cluster failed the workload over: the target location's fence names it.
        Fenced,
        NoRecoveryPoint,
        RecoveryPointReplicated,
        RPONotMeasured,
        RPOWithinTarget,
        RPOExceeded,
    }
}

names! {
    /// Reasons of Failover conditions.
    pub enum FailoverReason {
        FailoverReady,
        InvalidSpec,
        WorkloadNotFound,
        WorkloadNotProtected,
        /// The target location cannot be read: no point can be resolved or restored.
        TargetUnreachable,
        DuplicateFailover,
        NotStarted,
        /// Volumes are being restored in the target zone.
        Restoring,
        /// A volume could not be restored or verified: the workload was not started there.
        RestoreFailed,
        /// The restored workload is starting in the target zone.
        WaitingForPods,
        /// An object the failover must create has a name taken by an object it did not make.
        NameInUse,
        /// Planned mode: the source is stopping, or its final point is being taken.
        StoppingSource,
        /// Test mode: a drill never fails over; its copy runs in its own namespace.
        Drill,
        /// Test mode: waiting for the copy to be Ready or for the verification Job.
        Verifying,
        /// Test mode: the copy is Ready and the verification (if any) succeeded.
        Verified,
        /// Test mode: the verification Job failed or timed out.
        VerificationFailed,
        /// The workload runs in the target zone.
        FailedOver,
        NotCommitted,
        /// Committed: the points are deleted; the workload runs in the target zone.
        Committed,
        /// Commit asked for, waiting for FailedOver, or deleting the points.
        Committing,
    }
}

names! {
    /// Reasons of the Events the operator records (Warning events use the error category).
    pub enum EventReason {
        VaultReady,
        VaultNotReady,
        WorkloadReady,
        WorkloadNotReady,
        FailoverReady,
        FailoverNotReady,
        InvalidObject,
        ReconcileFailed,
        RecoveryPointCreated,
        RecoveryPointFailed,
        ReplicationFailed,
        HookFailed,
        /// The filesystems of a point were frozen across its nodes for the snapshot instant.
        FilesystemsFrozen,
        /// A freeze could not be carried out on every node: the point is not AppConsistent.
        FreezeFailed,
        RecoveryPointsPruned,
        RPOExceeded,
        FailoverSourceStopped,
        FailoverRestoreStarted,
        FailoverRestoreFailed,
        FailedOver,
        FailoverCommitted,
        FailoverRolledBack,
        DrillVerified,
        DrillFailed,
    }
}
