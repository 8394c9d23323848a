"""What H2 is trained to minimise besides (or instead of) the study's feature regression: output-level
signals shared by the adaptation objectives and the label-free peers (pseudo-labels, prediction entropy)."""
