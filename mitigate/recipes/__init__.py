"""The loops: pretrain, train, evaluate, reproduce, theory. Configs are in `mitigate.config`."""
