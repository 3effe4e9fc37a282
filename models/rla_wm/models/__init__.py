"""Networks and their checkpoint format: the DINO feature encoder, the RLA autoencoder, the
flow-matching world model, the regression baseline, the policy (world action model), predictors."""
