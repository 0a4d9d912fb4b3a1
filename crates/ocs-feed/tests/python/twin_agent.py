"""TwinAgent: a tiny agent on ocs 0.12.1's own OCSAgent, with the same ops and feeds as the
Rust twin in tests/parity.rs. The parity tests drive both with the same real clients and
compare the replies, key order included.

Usage: python twin_agent.py --site-file SITE --instance-id ID [other ocs agent args]

Every op is deterministic (no counters or clocks in session data), so that two runs can be
compared after only timestamps, PIDs and host names are masked.
"""
from autobahn.twisted.util import sleep as dsleep
from twisted.internet.defer import inlineCallbacks

from ocs import ocs_agent, site_config


class Twin:
    def __init__(self, agent):
        self.agent = agent
        self.aborted = False
        # Registration order (counts, plain) differs from name order.
        agent.register_feed('counts', record=True,
                            agg_params={'frame_length': 60, 'exclude_influx': False},
                            buffer_time=0)
        agent.register_feed('plain')

    @inlineCallbacks
    def delay_task(self, session, params):
        """delay_task(delay=0.25)"""
        delay = params.get('delay', 0.25)
        session.data = {'requested_delay': delay, 'zeta': 1, 'alpha': 2}
        self.aborted = False
        # Stays "stopping" for 0.5 s after an abort (so does the Rust twin): a second abort
        # right after the first finds it still stopping on both.
        waited = 0.0
        while waited < delay:
            if self.aborted:
                yield dsleep(0.5)
                return False, 'Aborted.'
            yield dsleep(0.05)
            waited += 0.05
        return True, 'Exited after %s seconds' % delay

    @inlineCallbacks
    def _abort_delay(self, session, params):
        yield
        if session.status == 'running':
            session.set_status('stopping')
            self.aborted = True
        return True, 'abort requested'

    @inlineCallbacks
    def acq(self, session, params):
        """acq()"""
        session.data = {'state': 'acquiring', 'nan_value': float('nan'),
                        'nested': {'zeta': 1, 'alpha': [1, 2.5, 'three', None, True]}}
        while session.status == 'running':
            yield dsleep(0.05)
        yield dsleep(0.5)
        return True, 'Stopped.'

    @inlineCallbacks
    def _stop_acq(self, session, params):
        yield
        if session.status == 'running':
            session.set_status('stopping')
        return True, 'stop requested'

    @ocs_agent.param('label', default='hello', type=str)
    @ocs_agent.param('x', default=1, type=int)
    @inlineCallbacks
    def echo(self, session, params):
        """echo(x=1, label='hello')"""
        yield
        session.data = {'params': params, 'nested': {'zeta': [1, 2.5], 'alpha': None}}
        self.agent.publish_to_feed('plain', {'zeta': [1, 'two', {'three': 3.0}],
                                             'x': params['x'], 'alpha': params['label']})
        self.agent.publish_to_feed('counts', {'block_name': 'probe',
                                              'timestamp': 1700000000.25,
                                              'data': {'x': params['x'], 'label': params['label'],
                                                       'flag': True, 'val': 2.5}})
        return True, 'echo ok'

    @ocs_agent.param('gain', default=1.0, type=float, check=lambda g: g > 0)
    @ocs_agent.param('mode', default='fast', cast=str.lower, choices=['fast', 'slow'])
    @ocs_agent.param('count', type=int)
    @ocs_agent.param('tags', default=None, type=list)
    @ocs_agent.param('name', default='x', cast=str)
    @ocs_agent.param('ratio', default=None, cast=float)
    @ocs_agent.param('maybe', default=5, type=int, treat_none_as_missing=False)
    @inlineCallbacks
    def configure(self, session, params):
        """configure(count, gain=1.0, mode='fast', tags=None, name='x', ratio=None, maybe=5)"""
        yield
        session.data = {'params': params}
        return True, 'configured'

    @ocs_agent.param('_no_check_strays')
    @ocs_agent.param('level', default=0, type=int)
    @inlineCallbacks
    def loose(self, session, params):
        """loose(level=0, ...)"""
        yield
        session.data = {'params': params}
        return True, 'loose ok'

    @inlineCallbacks
    def manual(self, session, params):
        """manual(speed)"""
        yield
        handler = ocs_agent.ParamHandler(params)
        speed = handler.get('speed', type=float)
        handler.check_for_strays()
        session.data = {'speed': speed}
        return True, 'manual ok'

    @inlineCallbacks
    def privileged(self, session, params):
        """privileged()"""
        yield
        return True, 'privileged ok'

    @inlineCallbacks
    def boot(self, session, params):
        """boot()"""
        yield
        session.data = {'startup_params': params}
        return True, 'booted'


def main(args=None):
    args = site_config.parse_args(agent_class='TwinAgent', args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    t = Twin(agent)
    # Registration order (the heartbeat's) differs from name order (get_api's).
    agent.register_task('delay_task', t.delay_task, aborter=t._abort_delay, blocking=False)
    agent.register_process('acq', t.acq, t._stop_acq, blocking=False)
    agent.register_task('echo', t.echo, blocking=False)
    agent.register_task('configure', t.configure, blocking=False)
    agent.register_task('loose', t.loose, blocking=False)
    agent.register_task('manual', t.manual, blocking=False)
    agent.register_task('privileged', t.privileged, blocking=False, min_privs=2)
    agent.register_task('boot', t.boot, blocking=False, startup={'alpha': 1, 'beta': 'two'},
                        min_privs=3)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
