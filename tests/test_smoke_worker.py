from tests.conftest import count_runs


def test_burst_worker_process_drains_queue(db_url, make_app, workers):
    app = make_app()
    from tests.apps.basic import record

    ids = app.enqueue_many([record.prepare(label=str(i)) for i in range(50)])
    w = workers(burst=True)
    assert w.wait(60) == 0, w.log()
    assert set(count_runs(db_url)) == set(ids)
