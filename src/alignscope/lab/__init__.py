"""The lab: the demo pipeline and the experiment scaffolding that reproduce the papers' findings on a
CPU, built on the synthetic world (`alignscope.world`) and the training and audit code above it."""
