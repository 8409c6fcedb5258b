const mariadb = require('mariadb');
(async () => {
  const conn = await mariadb.createConnection({socketPath: process.argv[2], user: 'root'});
  for (let i = 0; i < 3; i++) {
    const rows = await conn.execute('SELECT ? + 1 AS n', [i]);
    if (rows[0].n != i + 1) throw new Error('bad');
  }
  await conn.end();
  console.log('done 3');
})().catch(e => { console.error(e); process.exit(1); });
