"""The peers of bench.peers: the `lstm` SavedModel served by LitServe and by BentoML as their users
write such a service, with this project's segmentation and padding (model_preprocessing.text) and
its reply's fields. They run in the peers' own venv (.venv-peers, requirements/peers.txt), never in
the project's; nothing of the project imports them."""
