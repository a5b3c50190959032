"""What every recipe stage config shares."""

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")
