"""The fleet's shared model: the wire protocol (JSON lines), the warehouse column schema and
its Arrow form. Every fleet role depends on this layer; it depends on none of them."""
