"""Scale-out on Ray: sharded extraction with Ray Data and serving replicas behind Ray Serve."""
