"""scipy-signature drop-ins: ``cg``, ``minres``, ``gmres`` (numpy in, numpy out)."""

def cg(*a, **k):  # replaced by the full implementation
    raise NotImplementedError

minres = gmres = cg
