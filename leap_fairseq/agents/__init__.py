"""SimulEval agents: :class:`LeapWaitkSpeechAgent`, wait-k speech-to-text with a streaming encoder."""

from leap_fairseq.agents.waitk_speech_agent import LeapAgentStates, LeapWaitkSpeechAgent, StepTiming

__all__ = ["LeapAgentStates", "LeapWaitkSpeechAgent", "StepTiming"]
