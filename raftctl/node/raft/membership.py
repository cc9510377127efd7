"""Adding a replica as a non-voting learner first, and joining replicas that vote only once they are members.

pysyncobj names a member by its address and makes an added replica a voter in every configuration the moment
the change is in a log. A replica re-added with an empty data dir at a removed member's address therefore
answered, with an empty log, vote requests from a replica that still held an old configuration listing that
address: the simulation's seed 9054 (``--members``) let a cut-off replica lead term 4 without an entry committed
in term 3. Making a joining replica refuse votes until its log holds the change that adds it closes that (its
log then holds every entry committed before the change, and Raft's up-to-date check refuses a stale candidate),
but a joiner counted in a majority before it caught up could then block every election (seed 9585: two
joiners that could only catch up from a leader no one could elect). The cure is the Raft thesis' (§4.2.1):

* ``add_learner(addr)`` appends a ``learn`` change: every replica that holds it keeps the new replica in its
  configuration as a learner, which whichever replica leads sends entries and snapshots to, and which no replica
  counts in a majority or asks for a vote.
* The leader promotes a learner once it is connected, has acknowledged an entry, and its log is within
  PROMOTE_LAG entries of the commit index: it appends pysyncobj's own ``add`` change, which makes it a voter.
* What a replica is follows from its own log (``role()``): the configuration as of the log's end, from the
  newest base (the start-up peers for a log from index 1, else the snapshot's) and the changes after it. A voter
  votes and starts elections. A learner (its log holds its own ``learn``, not a later ``add``) starts none but
  votes, as etcd's learners do: its promotion may be committed before it reaches it (seed 15014). A replica
  started with ``join`` (``raftctl server --join``) and not yet in its log's configuration, or one whose log
  removed it, grants no vote or pre-vote and starts none: pysyncobj ignores a change of a replica's own
  membership, and a removed replica counted itself, led, and listed itself in its snapshots (seed 15045).
* A snapshot records the configuration as of its last entry (``snapshot_config``), not the one the log ends
  with, so a change past it that is later truncated is not in it, and a removed replica is not in its own.

One change at a time: pysyncobj meant to refuse a change while another was not yet applied, but never sets the
index it checks, so two changes proposed at once were both appended (two single-server changes in flight break
the majority overlap Raft's safety rests on). The leader now refuses one while any membership entry in its log
is past its applied index.

The configuration is the log's, as Raft says (the latest change in the log, committed or not): at a start, the
snapshot's, then every change in the journal after it (``_replay_membership``); applying a membership entry
changes nothing (``_SyncObj__doApplyCommand``). pysyncobj started from the peers it was given and made each change
again as it applied the entry, which lost elections and brought removed replicas back for a while (seeds 11314
and 11766, found by the 2,000 schedules after seed 10000 once learners existed).

Snapshots carry the learners under the key ``learners`` (absent when there are none, so the bytes are unchanged
otherwise); a replica of an older raftctl ignores the key and the ``learn`` entries (pysyncobj's change handling
returns False for a type it does not know), so in a mixed cluster it never replicates to a learner, and the
learner waits for a newer leader.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import pysyncobj.syncobj as psyncobj

from raftctl.node.raft.replication import ReplicationFixes

log = logging.getLogger("raftctl.raft.membership")

_SyncObj = psyncobj.SyncObj
_LEADER = psyncobj._RAFT_STATE.LEADER
MEMBERSHIP = psyncobj._COMMAND_TYPE.MEMBERSHIP
_MEMBERSHIP_BYTE = psyncobj._bchr(MEMBERSHIP)

LEARN = "learn"
# What this replica is in its own log (role()): a voter; a learner (its log or snapshot lists it as one); joining
# (started with --join, not yet in its log's configuration); removed (its log or snapshot does not list it).
VOTER, LEARNER, JOINING, REMOVED = "voter", "learner", "joining", "removed"
MAX_BASES = 8               # configurations kept at snapshot indexes (_config_at starts from the newest usable)
Config = tuple[frozenset[str], frozenset[str]]   # (voters, learners) by address, this replica included
PROMOTE_LAG = 64            # a learner whose log is this close to the commit index is promoted
PROMOTE_RETRY_S = 1.0       # a promotion proposed and not yet in the log is proposed again after this


def change_command(kind: str, addr: str, node: Any) -> bytes:
    """The log entry of a membership change, as pysyncobj's addNodeToCluster writes one (``kind`` add, rem
    or learn)."""
    return _MEMBERSHIP_BYTE + psyncobj.pickle.dumps([kind, addr, node])


class Membership(ReplicationFixes):
    """Mixin placed before ReplicationFixes in RaftNode (see the module's docstring)."""

    if TYPE_CHECKING:
        _SyncObj__nodeClass: Any
        _SyncObj__noopIDx: int | None

        def _applyCommand(self, command: bytes, callback: Any, commandType: int | None = None) -> None: ...  # noqa: N803

    def _init_membership(self, join: bool, self_addr: str | None = None, peers: Iterable[str] = ()) -> None:
        """Call before SyncObj.__init__ (its tick thread may run at once)."""
        self._learners: dict[str, Any] = {}        # address -> Node: replicated to, in no majority
        self._learner_term: int | None = None       # the term the leader last reset the learners' progress in
        self._was_learner: set[str] = set()          # promoted: a truncated promotion makes them learners again
        self._removed_learners: set[str] = set()     # removed while learners: a truncated removal, the same
        self._promoting: tuple[str, float] | None = None
        self._join_flag = bool(join) and self._repair
        self._role: str | None = None               # None: derive from the log at the next need
        # The configuration at an index whose entries after it the log holds: 0 (a log from its first entry: the
        # start-up peers, this replica among them unless --join) and each snapshot's boundary, taken or loaded.
        me = {self_addr} if self_addr and not self._join_flag else set()
        self._bases: dict[int, Config] = {0: (frozenset(set(peers) | me), frozenset())}
        self._config_replayed = False                # the journal's membership changes taken at the start
        self.votes_withheld = 0

    # ------------------------------------------------------------------ what this replica is
    def learner_ids(self) -> list[str]:
        """The learners this replica's configuration holds (a copy; any thread)."""
        return sorted(self.__dict__.get("_learners", {}))

    def role(self) -> str:
        """What this replica is in the configuration its log ends with: VOTER, LEARNER, JOINING (started with
        --join, not yet in it) or REMOVED (its log removed it, or a snapshot it loaded does not list it). Only a
        voter starts elections; a voter or a learner grants votes (``_withhold_vote``)."""
        if not self._repair:
            return VOTER
        if self._role is None:
            self._role = self._role_in(self._config_at(None))
        return self._role

    def joining(self) -> bool:
        """Whether this replica is joining: a learner, or started with --join and not yet in its log."""
        return self.role() in (LEARNER, JOINING)

    def removed(self) -> bool:
        """Whether this replica's log (or the snapshot it holds) removed it: it votes and leads no more."""
        return self.role() == REMOVED

    def _role_in(self, config: Config | None) -> str:
        me = self._SyncObj__selfNode
        if config is None or me is None:   # no usable base (a log compacted past every one): the flag says
            return JOINING if self._join_flag else VOTER
        voters, learners = config
        if me.id in voters:
            return VOTER
        if me.id in learners:
            return LEARNER
        return JOINING if self._join_flag else REMOVED

    def _membership_requests(self, after: int = 0, upto: int | None = None) -> Iterator[Any]:
        """The membership changes in the journal with index in (after, upto], oldest first (pysyncobj's
        requests: [kind, address, node])."""
        raft_log = self._SyncObj__raftLog
        if len(raft_log) == 0:
            return
        first = raft_log[0][1]
        end = len(raft_log) if upto is None else min(len(raft_log), upto - first + 1)
        for i in range(max(after + 1 - first, 0), end):
            command = raft_log[i][0]
            if command[:1] == _MEMBERSHIP_BYTE:
                request = self._SyncObj__parseChangeClusterRequest(command)
                if request:
                    yield request

    def _config_at(self, index: int | None) -> Config | None:
        """The configuration as of log index ``index`` (None: the log's end), this replica included as what it
        is: the newest base at or before it from which the log holds every entry, then each change after it
        (add: a voter; learn: a learner unless a voter already; rem: gone). None without a usable base."""
        raft_log = self._SyncObj__raftLog
        if len(raft_log) == 0:
            return None
        first, last = raft_log[0][1], raft_log[-1][1]
        upto = last if index is None else index
        usable = [b for b in self._bases if b <= upto and b + 1 >= first]
        if not usable:
            return None
        base = max(usable)
        voters, learners = set(self._bases[base][0]), set(self._bases[base][1])
        for request in self._membership_requests(base, upto):
            if len(request) < 2:
                continue
            kind, addr = request[0], request[1]
            if kind == "add":
                voters.add(addr)
                learners.discard(addr)
            elif kind == LEARN:
                if addr not in voters:
                    learners.add(addr)
            elif kind == "rem":
                voters.discard(addr)
                learners.discard(addr)
        return frozenset(voters), frozenset(learners)

    def snapshot_config(self, index: int, cluster: Iterable[Any]) -> Config:
        """The configuration a snapshot up to ``index`` records (Raft: the latest as of its last entry, not
        the one the log ends with), kept as a base for later ones; ``cluster`` (pysyncobj's voters and this
        replica) when the log cannot tell."""
        config = self._config_at(index)
        if config is None:
            me = self._SyncObj__selfNode
            voters = {getattr(n, "id", n) for n in cluster}
            learners = set(self.learner_ids())
            role = self.role()
            if me is not None and role != VOTER:
                voters.discard(me.id)
                if role == LEARNER:
                    learners.add(me.id)
            config = frozenset(voters), frozenset(learners)
        self._bases[index] = config
        for old in sorted(self._bases)[:-MAX_BASES]:
            del self._bases[old]
        return config

    def snapshot_cluster_loaded(self, cluster: list[str], learners: list[str], index: int | None = None) -> None:
        """A snapshot was loaded (at a start or received): its configuration is the log's as of ``index``; what
        this replica is follows from it and the log after it (re-derived at the next need)."""
        self._pending_learners = list(learners)
        if index is not None:
            self._bases = {index: (frozenset(cluster), frozenset(learners))}
        self._role = None

    def _adopt_learners(self) -> None:
        """After pysyncobj's snapshot load replaced the voters: the learners are the snapshot's."""
        learners = self.__dict__.pop("_pending_learners", None)
        if learners is None:
            return
        me = self._SyncObj__selfNode
        wanted = {a for a in learners if me is None or a != me.id}
        for addr in sorted(set(self._learners) - wanted):
            self._drop_learner(addr)
        voters = {getattr(n, "id", n) for n in self._SyncObj__otherNodes}
        for addr in sorted(wanted - set(self._learners) - voters):
            self._add_learner(self._node(addr))

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802,N803 (pysyncobj's names)
        super()._SyncObj__loadDumpFile(clearJournal)
        if self._repair:
            self._adopt_learners()
            self._replay_membership()

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802 (pysyncobj's name)
        """pysyncobj makes each membership change again when it applies the entry, for a restart, which begins
        from the start-up peers (_replay_membership does that now). Made again then, an old change brought the
        configuration back to the past for as long as the entries after it were not applied: a restarted replica
        applying an old 'learn' and 'add' of a replica removed since counted it as a voter again, stopped as it
        was, and never committed the entry that removes it (the simulation's seed 11766 --members). The
        configuration is the log's; applying a membership entry changes nothing."""
        if self._repair and command[:1] == _MEMBERSHIP_BYTE:
            return None
        return _SyncObj._SyncObj__doApplyCommand(self, command)

    def _replay_membership(self) -> None:
        """The configuration is the one in the log (Raft: the latest in the log, committed or not): after the
        snapshot's, every membership change in the journal, in order. pysyncobj starts from the peers it was given
        and applies the journal's changes only as it applies their entries, which takes a leader elected under
        those peers: a restarted replica that was the only voter left (the others removed, the rest learners)
        counted its start-up peers, one stopped and one joining, and no leader was ever elected (the simulation's
        seed 11314 --members). Applying the entries later changes nothing (_SyncObj__doApplyCommand)."""
        self._config_replayed = True
        if not self._SyncObj__conf.dynamicMembershipChange:
            return
        for request in list(self._membership_requests()):
            self._SyncObj__doChangeCluster(request)
        self._role = None

    # ------------------------------------------------------------------ API (any thread)
    def add_learner(self, addr: str, callback: Callable[[Any, Any], None] | None = None) -> None:
        """Propose adding ``addr`` as a learner; ``callback(result, err)`` when the change commits or fails.
        The leader promotes it to a voter once it has caught up."""
        self._applyCommand(change_command(LEARN, addr, self._node(addr))[1:], callback, MEMBERSHIP)

    # ------------------------------------------------------------------ changes (tick thread)
    def _node(self, addr: Any) -> Any:
        if not isinstance(addr, str):
            return addr
        return self._SyncObj__nodeClass(addr)

    def _SyncObj__changeCluster(self, request: Any) -> bool:  # noqa: N802 (pysyncobj's name)
        """The leader appends a change only when no other is in its log past the applied index."""
        if self._repair and self._change_pending():
            log.info("membership change %s %s refused: another is not yet applied", request[0], request[1])
            return False
        return bool(_SyncObj._SyncObj__changeCluster(self, request))

    def _change_pending(self) -> bool:
        raft_log = self._SyncObj__raftLog
        first = raft_log[0][1]
        for pos in range(max(self._SyncObj__raftLastApplied + 1 - first, 0), len(raft_log)):
            if raft_log[pos][0][:1] == _MEMBERSHIP_BYTE:
                return True
        return False

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:  # noqa: N802 (pysyncobj's)
        if not self._repair or not request or len(request) < 2:
            return super()._SyncObj__doChangeCluster(request, reverse)
        kind, addr = request[0], request[1]
        me = self._SyncObj__selfNode
        if me is not None and addr == me.id:
            self._role = None      # its own change: what it is follows from the log (re-read at the next need)
            return False           # as pysyncobj: a replica never adds or removes itself
        if kind == LEARN:
            if reverse:
                return self._drop_learner(addr)
            if addr in self._learners or any(getattr(n, "id", n) == addr for n in self._SyncObj__otherNodes):
                return False
            self._removed_learners.discard(addr)
            self._was_learner.discard(addr)
            self._add_learner(self._node(request[2] if len(request) >= 3 else addr))
            return True
        if kind == "add" and not reverse and addr in self._learners:
            return self._promote(addr)
        if kind == "add" and reverse and addr in self._was_learner:
            return self._demote(addr)
        if kind == "rem" and not reverse and addr in self._learners:
            self._removed_learners.add(addr)
            return self._drop_learner(addr)
        if kind == "rem" and reverse and addr in self._removed_learners:
            self._removed_learners.discard(addr)
            self._add_learner(self._node(request[2] if len(request) >= 3 else addr))
            return True
        if not reverse:
            self._was_learner.discard(addr)
            self._removed_learners.discard(addr)
        return super()._SyncObj__doChangeCluster(request, reverse)

    def _add_learner(self, node: Any) -> None:
        self._learners[node.id] = node
        self._SyncObj__raftNextIndex[node] = self._SyncObj__raftLog[-1][1] + 1
        self._SyncObj__raftMatchIndex[node] = 0
        self._SyncObj__transport.addNode(node)
        log.info("learner %s added: replicated to, counted in no majority", node.id)

    def _drop_learner(self, addr: str) -> bool:
        node = self._learners.pop(addr, None)
        if node is None:
            return False
        self._SyncObj__raftNextIndex.pop(node, None)
        self._SyncObj__raftMatchIndex.pop(node, None)
        self.__dict__.get("_replication_progress", {}).pop(node, None)
        self._SyncObj__transport.dropNode(node)
        return True

    def _promote(self, addr: str) -> bool:
        node = self._learners.pop(addr)
        self._was_learner.add(addr)
        self._SyncObj__otherNodes.add(node)   # the transport has it already (and its connection)
        self._SyncObj__raftNextIndex.setdefault(node, self._SyncObj__raftLog[-1][1] + 1)
        self._SyncObj__raftMatchIndex.setdefault(node, 0)
        if self._SyncObj__raftState == _LEADER:
            self._SyncObj__lastResponseTime[node] = psyncobj.monotonicTime()
        log.info("learner %s promoted to voter", addr)
        return True

    def _demote(self, addr: str) -> bool:
        node = next((n for n in self._SyncObj__otherNodes if getattr(n, "id", n) == addr), None)
        self._was_learner.discard(addr)
        if node is None:
            return False
        self._SyncObj__otherNodes.discard(node)
        self._SyncObj__lastResponseTime.pop(node, None)
        self._learners[addr] = node
        return True

    # ------------------------------------------------------------------ votes (tick thread)
    def _withhold_vote(self, node: Any, message: dict) -> bool:
        """A replica not in its own log's configuration (joining, removed) answers no vote request (pysyncobj has
        no refusal) and a pre-vote with a clear no.

        A learner votes, as etcd's do: the leader may have promoted it with an entry that has not reached it yet,
        and if that leader dies the survivors may need its vote (the simulation's seed 15014: the configuration
        {n1, n2} with n2 promoted unaware, no leader for the rest of the run). Its vote is safe where an empty
        replica's was not (seed 9054): its log holds its own `learn`, which a leader appends only once the change
        before it (the removal of an earlier replica at the same address) is applied, so committed; a candidate at
        least as up to date holds that removal, and lists this address as a voter only by a later promotion."""
        if self.role() in (VOTER, LEARNER):
            return False
        self.votes_withheld += 1
        if message.get("type") == "pre_vote":
            self._SyncObj__transport.send(node, {"type": "pre_vote_response", "term": message.get("term"),
                                                 "granted": False})
        return True

    def _pre_vote_tick(self) -> bool:
        if self._SyncObj__selfNode is not None and self._SyncObj__raftState != _LEADER and self.role() != VOTER:
            now = psyncobj.monotonicTime()
            if self._SyncObj__raftElectionDeadline < now:   # no election from a replica that may not vote
                self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
            return False
        return super()._pre_vote_tick()

    # ------------------------------------------------------------------ leader (tick thread)
    def _replication_targets(self) -> set[Any]:
        targets = super()._replication_targets()
        if self._learners:
            term = self._SyncObj__raftCurrentTerm
            if self._learner_term != term:   # a new leadership: probe the learners from the log's end
                self._learner_term = term
                last = self._SyncObj__raftLog[-1][1]
                for node in self._learners.values():
                    self._SyncObj__raftNextIndex[node] = last + 1
                    self._SyncObj__raftMatchIndex[node] = 0
            targets = targets | set(self._learners.values())
        return targets

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (pysyncobj's names)
        if self._repair and not self._config_replayed and self._SyncObj__transport.ready:
            dump = self._SyncObj__conf.fullDumpFile
            if not (self._SyncObj__needLoadDumpFile and dump is not None and os.path.isfile(dump)):
                self._replay_membership()   # else the snapshot's load does, first thing in pysyncobj's tick
        super()._onTick(timeToWait)
        if self._repair and self._SyncObj__raftState == _LEADER:
            if self.role() == REMOVED:   # never elected so (it starts no election); a leader counts itself
                log.warning("stepping down: this replica's log removed it from the configuration")
                self._SyncObj__setState(psyncobj._RAFT_STATE.FOLLOWER)
                self._SyncObj__raftLeader = None
            elif self._learners:
                self._promote_caught_up()

    def _promote_caught_up(self) -> None:
        now = psyncobj.monotonicTime()
        if self._promoting is not None and now - self._promoting[1] < PROMOTE_RETRY_S:
            return
        noop = self._SyncObj__noopIDx
        if noop is None or self._SyncObj__raftLastApplied < noop or self._change_pending():
            return
        commit = self._SyncObj__raftCommitIndex
        match = self._SyncObj__raftMatchIndex
        connected = self._SyncObj__connectedNodes
        for addr, node in sorted(self._learners.items()):
            if node in connected and match.get(node, 0) >= commit - PROMOTE_LAG and match.get(node, 0) > 0:
                log.info("promoting learner %s (match %d, commit %d)", addr, match.get(node, 0), commit)
                self._promoting = (addr, now)
                self._applyCommand(change_command("add", addr, node)[1:], None, MEMBERSHIP)
                return
