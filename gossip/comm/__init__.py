"""Communication: where the workers run (:mod:`~gossip.comm.distributed`), the messages between
them and their byte counts (:mod:`~gossip.comm.messages`), the simulated network's clock of a
config's ``network:`` section (:mod:`~gossip.comm.simclock`), link faults, seeded random streams
and local multi-process launches."""
