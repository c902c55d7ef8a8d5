// The events the SDK tests send: every call type in a fixed mix, with a
// messageId the test chose, so the stored rows can be matched one by one.
'use strict';

const TYPES = ['track', 'track', 'identify', 'page', 'track', 'screen', 'group', 'track',
	'page', 'alias'];

// Event number i of a run: { method, msg, type }.  Identities repeat over
// 40 users so identity resolution has work to do; alias links a device id
// to its user.  With bigEvery > 0, events 7, 7 + bigEvery, ... are over 32 kB.
function makeEvent(sdk, prefix, i, bigEvery = 0)
{
	const type = TYPES[i % TYPES.length];
	const user = `${prefix}-u${i % 40}`;
	const device = `${prefix}-d${i % 40}`;
	const msg = { messageId: `${prefix}-${i}` };
	if (i % 3 === 0)
		msg.anonymousId = device;
	else
		msg.userId = user;
	msg.context = { ip: '192.0.2.1', locale: 'en-GB', test: { sdk, seq: i } };
	switch (type)
	{
		case 'track':
			msg.event = `Order Step ${i % 7}`;
			msg.properties = { seq: i, revenue: (i % 100) / 4, currency: 'EUR' };
			break;
		case 'identify':
			msg.userId = user;
			msg.traits = { email: `${user}@example.com`, plan: i % 2 ? 'pro' : 'free' };
			break;
		case 'page':
			msg.name = i % 2 ? 'Pricing' : 'Home';
			msg.properties = { url: `https://example.com/p/${i % 13}` };
			break;
		case 'screen':
			msg.name = 'Settings';
			msg.properties = { seq: i };
			break;
		case 'group':
			msg.groupId = `${prefix}-g${i % 5}`;
			msg.traits = { name: `Company ${i % 5}`, employees: i % 500 };
			break;
		case 'alias':
			delete msg.anonymousId;
			msg.previousId = device;
			msg.userId = user;
			break;
	}
	if (bigEvery > 0 && i % bigEvery === 7)
		msg.context.blob = 'x'.repeat(40 * 1024);	// over the 32 kB an event may take
	return { method: type, msg, type };
}

module.exports = { makeEvent, TYPES };
