"""Scale-out on Ray: many sources across workers, and one source split across workers.

``reconstruct_many`` (:mod:`~da3stream.scaleout.batch`) runs each source into
its own store; ``reconstruct_split`` (:mod:`~da3stream.scaleout.driver`) splits
one source into overlapping segments reconstructed in parallel by the normal
streaming engine, then merges the part stores into one store
(:mod:`~da3stream.scaleout.merge`). docs/SCALEOUT.md has the design.
"""
