"""Score distillation: objectives (SDS, CSD, NFSD, VSD, ASD, ISM, SDS-bridge, RFDS) computed from
branch predictions of the guidance core, priors, trainable estimators, a pure-PyTorch scene and a
Lightning system."""
